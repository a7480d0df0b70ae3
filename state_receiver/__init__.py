"""State side: validates, authorizes and applies each district's records, and acknowledges each one."""
