"""Real servers the tests start on 127.0.0.1 (not emulators): Redis for the task queue."""
