"""Boot and stop the process: settings, store, supervisor, and the facade HTTP talks to."""
