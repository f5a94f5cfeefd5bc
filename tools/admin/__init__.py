"""`roadside gateway` beyond run and check: a running gateway's local API (cmd, commands,
ports, accept) and the dead letters in its queue."""
