# roadside node firmware: deployed to a board's /lib, run by main.py (board) or sim_main.py.
VERSION = "0.1.0"
