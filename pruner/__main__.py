import sys

from pruner.cli.main import main

sys.exit(main())
