"""Updates over the air, the gateway's side (issue 14, PROTOCOL.md 2.6).

bundle.py reads a `.rsb` bundle and checks what the gateway can check before offering it;
store.py keeps rollouts and per-node transfers in data_dir/ota.sqlite; transfer.py moves one
bundle to one node (OFFER, paced CHUNKs, switch, trial); rollout.py runs a rollout over nodes
with a canary step; manager.py wires them to the sessions, the commands and /status.
"""
