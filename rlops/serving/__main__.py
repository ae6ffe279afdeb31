"""`python -m rlops.serving`: the serving container's entry point."""
import sys

from rlops.serving import server

sys.exit(server.main())
