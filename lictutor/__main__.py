import sys

from lictutor.cli import main

sys.exit(main())
