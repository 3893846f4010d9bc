"""Types of the compiled CBOR structure scan (``_wire/cborscan.pyx``)."""

def scan(data: bytes, max_depth: int, max_items: int, allow_int_keys: bool) -> str | None:
    """None if ``data`` is exactly one item of the accepted subset, else what is wrong."""
