"""`roadside ingest`: the city's ingest side (issue 15). Stateless HTTP receivers and an MQTT
subscriber group that write uplink batches (PROTOCOL.md section 3) into PostgreSQL, exactly once
by (node, seq) and by the batch's Idempotency-Key.

validate.py checks a batch fast (the CDDL rule `uplink-batch` as plain Python), schema.py holds
the tables, indexes and views, store.py writes one batch per transaction, http.py and mqtt.py
are the two ways in. Everything the schema needs is in PostgreSQL; the processes hold no state.
"""
