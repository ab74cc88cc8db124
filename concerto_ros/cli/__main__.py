"""``python -m concerto_ros.cli`` = the ``concerto`` command."""

import sys

from concerto_ros.cli import main

sys.exit(main())
