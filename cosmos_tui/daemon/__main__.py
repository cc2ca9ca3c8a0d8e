import sys

from cosmos_tui.daemon.main import main

sys.exit(main())
