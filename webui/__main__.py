"""`python -m webui` = `python3 launch.py` inside the prepared environment."""
import sys

from .cli import main

sys.exit(main())
