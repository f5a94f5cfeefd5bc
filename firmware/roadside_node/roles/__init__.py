# The node's roles, in the order of their BLE advertisement codes (1, 2, ...; PROTOCOL.md 5.1).
# A role is roles/<name>.py with a class Role(config, emit, io, journal); its hardware is
# hw/esp32_<name>.py on a board and hw/sim_<name>.py on the virtual board, each with a class
# IO(hw, config) (hw/contract.pyi). The host's table of roles is gateway/roles.py
# (tests/gateway/test_gateway_roles.py keeps the two in step).
ROLES = ("water", "signal", "toll", "rain")
