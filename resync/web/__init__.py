"""The web console: the Resync State Data page and its siblings, for district and state staff, on top of the
same stores the command line reads. Logins and tool rights live in each side's own database."""
