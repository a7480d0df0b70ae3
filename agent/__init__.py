"""District side daemon and the administrators' view: batches, acks, history, logs, queues."""
