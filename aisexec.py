"""Run the openais executive: ``python aisexec.py -c /etc/ais/openais.conf``."""
import sys

from ais.main import main

if __name__ == "__main__":
    sys.exit(main())
