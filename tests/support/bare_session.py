"""A MicroPython prelude: a real roadside_node Session `s` over a stand-in clock, UART and
journal (no flash, no role), its log lines in `logs`. For tests of what a session does with a
command or a failure, run with support.micropython.run_stdout(SESSION + code)."""

SESSION = r"""
from roadside_node.session import Session
from roadside_node.config import Config
class HW:
    def ticks_ms(self): return 0
    def ticks_diff(self, a, b): return a - b
    def uptime_s(self): return 0
    def reset_cause(self): return "power_on"
    def free_heap(self): return 1
    def uart_write(self, d): pass
class J:
    first_unacked = 1; next_seq = 1; boot_count = 1; count = 0; dropped_full = 0
logs = []
s = Session(HW(), J(), Config({"node_id": "wl-0001"}), "t", log=logs.append)
"""
