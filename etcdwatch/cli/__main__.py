import sys

from etcdwatch import cli

sys.exit(cli.main())
