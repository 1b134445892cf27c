import sys

from lorafile.cli import main

sys.exit(main())
