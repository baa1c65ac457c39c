"""The TFRecord file format, read just far enough to check a shard.

A TFRecord file is a sequence of records, each framed as::

    length (uint64 LE) | masked CRC-32C of length (uint32) | data | masked CRC-32C of data (uint32)

:func:`scan_tfrecord` checks the first record's two CRCs and, when asked, walks
every record header to the end of the file (truncation, garbage, the number of
records), without TensorFlow.  :mod:`nested_research.data.data_dir` uses it to
tell a damaged prepared dataset before training.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

__all__ = ["TFRECORD_FRAMING", "masked_crc32c", "scan_tfrecord"]

#: Bytes around each TFRecord payload: length (8), CRC of the length (4), CRC of the data (4).
TFRECORD_FRAMING = 16
_CRC_TABLE: list = []


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that frames TFRecords (pure Python: only headers and first records)."""
    if not _CRC_TABLE:
        for i in range(256):
            crc = i
            for _ in range(8):
                crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
            _CRC_TABLE.append(crc)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scan_tfrecord(path: str, size: int, every_record: bool) -> Tuple[Optional[str], int]:
    """``(problem or None, records seen)`` for the TFRecord file ``path`` of ``size`` bytes.

    Checks the first record (header and data CRCs) and, with ``every_record``,
    walks every record header to the end of the file (truncation, garbage,
    the number of records).
    """
    count, offset = 0, 0
    with open(path, "rb") as fh:
        while offset < size:
            header = fh.read(12)
            if len(header) < 12:
                return f"truncated record header at byte {offset}", count
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                return f"corrupted record header at byte {offset}", count
            end = offset + 12 + length + 4
            if end > size:
                return (f"the record at byte {offset} is truncated (it needs {end} bytes, "
                        f"the file has {size})"), count
            if count == 0:
                payload = fh.read(length)
                (data_crc,) = struct.unpack("<I", fh.read(4))
                if masked_crc32c(payload) != data_crc:
                    return f"corrupted record data at byte {offset}", count
            else:
                fh.seek(end)
            count, offset = count + 1, end
            if not every_record:
                break
    return None, count
