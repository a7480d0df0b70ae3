"""The wire contract between a district and the state: envelopes, acks, errors, the object catalog."""
