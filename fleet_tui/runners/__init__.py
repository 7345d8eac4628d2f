"""Where agent processes run: Docker containers or local subprocesses."""
