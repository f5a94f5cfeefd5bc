# A firmware bundle's payload on the next OTA partition (esp32.Partition), for ota.py: imported
# only for a firmware bundle (its offer, its chunks, its switch, its confirm).
from micropython import const

BLOCK = const(4096)  # a firmware partition's erase block


def partition():
    """The OTA partition a firmware image goes to; None when the board has none."""
    try:
        import esp32
        return esp32.Partition(esp32.Partition.RUNNING).get_next_update()  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - no esp32 module, no OTA partitions
        return None


def write(part, at, data):
    while len(data):
        block, off = at // BLOCK, at % BLOCK
        if off == 0:
            part.ioctl(6, block)  # erase the block before its first write
        k = min(len(data), BLOCK - off)
        part.writeblocks(block, data[:k], off)
        at += k
        data = data[k:]


def read(part, at, mv):
    part.readblocks(at // BLOCK, mv, at % BLOCK)


def confirm():
    import esp32
    esp32.Partition.mark_app_valid_cancel_rollback()
