"""The foundation every side stands on: settings, databases, the broker, retry and logging. It imports the wire
contract (``messages``) and nothing above it."""
