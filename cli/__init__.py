"""The command line, the local demo and the deploy tooling: the top layer."""
