"""Text-header refusals: NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``).

ITK reads some broken text headers without an error, or fails with a message that points
elsewhere; the header is read here first and such files are refused:

* NRRD ``spacings:`` and MetaImage ``ElementSpacing`` that are negative become flipped axes and
  NaN NRRD spacings become 1 mm (a flip belongs in ``space directions`` / ``TransformMatrix``);
  zero spacings make ITK fail cryptically.
* Sizes that are not positive whole numbers, counts that do not match the dimension, unknown
  MetaImage element types, non-numeric or NaN ``Offset`` (ITK reads 0), singular direction
  matrices, a missing MetaImage data file, and sizes needing more memory than is available.
* A compressed MetaImage whose zlib stream is cut short or corrupt: ITK returns uninitialised
  or wrong voxels without an error, so the stream is inflated here (in chunks) and checked;
  an uncompressed one must hold all its voxels.

Every refusal is a :class:`ValueError` (``FileNotFoundError`` for a missing data file) naming
the file, the field, what was expected and how to fix it.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import numpy as np

from envs.io.common import require_memory

__all__ = ["check_metaimage_header", "check_nrrd_header"]

# Bytes per value of the NRRD types (every spelling of the NRRD spec); others count as 1.
_NRRD_TYPE_BYTES = {
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32"), 4),
    **dict.fromkeys(("uint32_t", "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "int64"), 8),
    **dict.fromkeys(("signed long long int", "int64_t", "ulonglong", "unsigned long long"), 8),
    **dict.fromkeys(("unsigned long long int", "uint64", "uint64_t", "double"), 8),
}
# Bytes per value of the scalar MetaImage element types ITK reads.
_MET_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}  # fmt: skip
# A header key: printable ASCII words (ITK also writes metadata keys such as "0008|0060").
_MET_KEY = re.compile(r"[!-<>-~]+( [!-<>-~]+)*")
_CHUNK_BYTES = 1 << 22
# Bytes of a MetaImage text header read at most (ITK's own metadata can make headers long).
_HEADER_LIMIT = 1 << 20


def _read_text_header(path: Path, limit: int = 1 << 20) -> tuple[list[str], int | None]:
    """Lines of a NRRD header (up to the first blank line) and the byte where data follow."""
    with open(path, "rb") as stream:
        raw = stream.read(limit)
    end = re.search(rb"\r?\n\r?\n", raw)
    lines = raw[: end.start() if end else len(raw)].decode("latin-1").splitlines()
    return lines, end.end() if end else None


def _check_spacing_values(path: Path, field: str, values: list[str], fix: str) -> None:
    try:
        numbers = [float(value) for value in values]
    except ValueError as error:
        raise ValueError(f"{path}: {field} = {' '.join(values)!r} is not numeric; {fix}") from error
    if not all(math.isfinite(n) and n > 0 for n in numbers):
        raise ValueError(
            f"{path}: invalid voxel spacing {field} = {numbers}; expected finite values > 0 mm. "
            f"SimpleITK would silently flip negative axes or invent 1 mm for NaN, so medgym refuses "
            f"the file; {fix}"
        )


def _whole_numbers(path: Path, field: str, value: str, count: int | None, minimum: int = 1) -> list[int]:
    """The whole numbers >= ``minimum`` of a header field (``count`` of them when given)."""
    words = value.split()
    numbers = [int(word) for word in words if re.fullmatch(r"[+]?\d{1,18}", word)]
    if len(numbers) != len(words) or any(n < minimum for n in numbers) or not numbers:
        raise ValueError(
            f"{path}: {field} = {value!r}; expected whole numbers >= {minimum}. The header is corrupt: "
            "re-export the file"
        )
    if count is not None and len(numbers) != count:
        raise ValueError(
            f"{path}: {field} = {value!r} has {len(numbers)} values; expected {count} (one per axis). "
            "The header is corrupt: re-export the file"
        )
    return numbers


def _finite_numbers(path: Path, field: str, value: str, count: int) -> list[float]:
    """``count`` finite numbers of a header field, or a ``ValueError`` (ITK would read 0)."""
    try:
        numbers = [float(word) for word in value.split()]
    except ValueError:
        numbers = []
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise ValueError(
            f"{path}: {field} = {value!r}; expected {count} finite numbers (ITK would silently read "
            "the rest as 0). Fix the header"
        )
    return numbers


def _check_directions(path: Path, field: str, vectors: list[list[float]]) -> None:
    """Refuse a 3-D direction matrix whose axes are parallel (ITK fails with a bare matrix row)."""
    if len(vectors) == 3 and all(len(vector) == 3 for vector in vectors):
        matrix = np.asarray(vectors, dtype=np.float64)
        scale = float(np.prod(np.linalg.norm(matrix, axis=1)))
        if not scale > 0 or abs(float(np.linalg.det(matrix))) <= 1e-6 * scale:
            raise ValueError(
                f"{path}: {field} {vectors} are linearly dependent (two axes are parallel or one is "
                "zero); expected three independent axis vectors. Fix the header"
            )


def check_nrrd_header(path: Path) -> None:
    """Refuse a NRRD header ITK would silently repair or that cannot fit in memory."""
    lines, data_start = _read_text_header(path)
    if not lines or not lines[0].startswith("NRRD"):
        first = lines[0][:40] if lines else ""
        raise ValueError(
            f"{path}: not a NRRD file (expected the magic 'NRRD000x' on the first line, got {first!r}); "
            "check the file or give it the suffix of its actual format"
        )
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    dimension = None
    if "dimension" in fields:
        dimension = _whole_numbers(path, "dimension", fields["dimension"], 1)[0]
    sizes = _whole_numbers(path, "sizes", fields["sizes"], dimension) if "sizes" in fields else None
    fix = "state the geometry with 'space directions' (one vector per axis, its length the spacing)"
    if "space directions" in fields:
        vectors = []
        for vector in re.findall(r"\(([^)]*)\)", fields["space directions"]):
            try:
                components = [float(c) for c in vector.split(",")]
            except ValueError as error:
                raise ValueError(
                    f"{path}: space directions vector ({vector}) is not numeric; {fix}"
                ) from error
            if not all(math.isfinite(c) for c in components) or math.hypot(*components) <= 0:
                raise ValueError(
                    f"{path}: invalid voxel spacing: space directions vector ({vector}) has zero or "
                    f"non-finite length; expected one non-zero vector per spatial axis; {fix}"
                )
            vectors.append(components)
        _check_directions(path, "space directions", vectors)
    elif "spacings" in fields:
        values = fields["spacings"].split()
        if fields.get("dimension") != "3":
            # Non-spatial axes (e.g. a vector component) legitimately carry NaN.
            values = [value for value in values if value.lower() != "nan"]
        _check_spacing_values(path, "spacings", values, fix)
    if sizes is not None:
        type_name = " ".join(fields.get("type", "").lower().split())
        require_memory(
            path, f"sizes {sizes} of {type_name or 'unknown type'}",
            2 * math.prod(sizes) * _NRRD_TYPE_BYTES.get(type_name, 1),
        )  # fmt: skip
        attached = not any(key in fields for key in ("data file", "datafile", "byte skip", "line skip"))
        if attached and data_start is not None and fields.get("encoding") == "raw":
            expected = math.prod(sizes) * _NRRD_TYPE_BYTES.get(type_name, 1)
            actual = path.stat().st_size - data_start
            if actual < expected:
                raise ValueError(
                    f"{path}: could not read it as a NRRD image: the header promises {expected} bytes "
                    f"of raw voxels (sizes {sizes}, {type_name}), the file holds {actual}; the file is "
                    "corrupt, truncated or not an image. Re-download or re-export it"
                )


def check_metaimage_header(path: Path) -> None:
    """Refuse a MetaImage header ITK would silently repair, misreport or not fit in memory."""
    with open(path, "rb") as stream:
        raw = stream.read(_HEADER_LIMIT + 1)
    if len(raw) > _HEADER_LIMIT:  # judge complete lines only: a header this long is left to ITK
        raw = raw[: raw.rfind(b"\n", 0, _HEADER_LIMIT) + 1]
    fields: dict[str, str] = {}
    data_start = None
    position = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        position += len(line) + 1
        text = line.decode("latin-1")
        key, equals, value = text.partition("=")
        key = key.strip()
        if not text.strip():
            continue
        if not (equals and _MET_KEY.fullmatch(key)):
            raise ValueError(
                f"{path}: MetaImage header line {number} {text[:40]!r} is not 'Key = value'; expected a "
                "text header ending with ElementDataFile. The file is corrupt or not a MetaImage"
            )
        fields[key] = value.strip()
        if key == "ElementSpacing":
            _check_spacing_values(
                path,
                "ElementSpacing",
                value.split(),
                "fix ElementSpacing (mm) and state flips in TransformMatrix",
            )
        if key == "ElementDataFile":
            data_start = position
            break  # binary data follow in .mha
    missing = [key for key in ("NDims", "DimSize", "ElementType", "ElementDataFile") if key not in fields]
    if missing and len(raw) >= _HEADER_LIMIT // 2:
        return  # a huge header (metadata) that goes on past the limit: ITK's own checks apply
    if missing:
        raise ValueError(
            f"{path}: not a MetaImage file: the header lacks {', '.join(missing)}; expected 'Key = value' "
            "lines ending with ElementDataFile. Check the file or give it the suffix of its actual format"
        )
    ndims = _whole_numbers(path, "NDims", fields["NDims"], 1)[0]
    sizes = _whole_numbers(path, "DimSize", fields["DimSize"], ndims)
    if "ElementSpacing" in fields and len(fields["ElementSpacing"].split()) != ndims:
        raise ValueError(
            f"{path}: ElementSpacing = {fields['ElementSpacing']!r}; expected {ndims} values (NDims). "
            "Fix the header"
        )
    for key in ("Offset", "Origin", "Position"):
        if key in fields:
            _finite_numbers(path, key, fields[key], ndims)
    for key in ("TransformMatrix", "Rotation", "Orientation"):
        if key in fields:
            numbers = _finite_numbers(path, key, fields[key], ndims * ndims)
            _check_directions(path, key, [numbers[i : i + ndims] for i in range(0, len(numbers), ndims)])
    channels = fields.get("ElementNumberOfChannels", "1")
    channels = _whole_numbers(path, "ElementNumberOfChannels", channels, 1)[0]
    element_type = fields.get("ElementType", "")
    if element_type not in _MET_TYPE_BYTES:
        raise ValueError(
            f"{path}: ElementType = {element_type!r}; expected one of {', '.join(_MET_TYPE_BYTES)}. "
            "Fix the header or re-export the file"
        )
    expected = math.prod(sizes) * channels * _MET_TYPE_BYTES[element_type]
    require_memory(path, f"DimSize {sizes} of {element_type}", 2 * expected)
    _check_metaimage_data(path, fields, data_start, expected)


def _check_metaimage_data(path: Path, fields: dict[str, str], data_start: int | None, expected: int) -> None:
    """A missing data file, a short raw block or a broken zlib stream (ITK would read garbage)."""
    data_file = fields.get("ElementDataFile", "")
    if data_start is None or "HeaderSize" in fields:
        return  # no data file line, or data placed by HeaderSize: ITK's own checks apply
    if data_file != "LOCAL":
        if data_file != "LIST" and " " not in data_file:
            target = path.parent / data_file
            if not target.is_file():
                raise FileNotFoundError(
                    f"{path}: ElementDataFile {data_file!r} not found (looked at {target}); expected "
                    "the data file next to the header. Copy it there or fix ElementDataFile"
                )
        return
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if not compressed:
        actual = path.stat().st_size - data_start
        if actual < expected:
            raise ValueError(
                f"{path}: could not read it as a MetaImage image: the header promises {expected} bytes "
                f"of voxels, the file holds {max(actual, 0)}; the file is corrupt, truncated or not an "
                "image. Re-download or re-export it"
            )
        return
    inflated, complete = _inflated_size(path, data_start)
    if not complete or inflated < expected:
        state = {None: "ends early", False: "is corrupt", True: "is too short"}[complete]
        raise ValueError(
            f"{path}: truncated or corrupt compressed MetaImage data (the zlib stream {state}; "
            f"expected {expected} bytes of voxels); ITK would return wrong voxels without an error. "
            "Re-download or re-export the file"
        )


def _inflated_size(path: Path, start: int) -> tuple[int, bool | None]:
    """Bytes the zlib/gzip stream from byte ``start`` inflates to, and whether it is intact.

    Intact is ``True`` (stream end and checksum reached), ``None`` (the file ends first) or
    ``False`` (corrupt data or checksum). The output is counted and dropped, chunk by chunk.
    """
    inflater = zlib.decompressobj(47)  # zlib or gzip header, as MetaIO reads it
    total = 0
    try:
        with open(path, "rb") as stream:
            stream.seek(start)
            while not inflater.eof and (chunk := stream.read(_CHUNK_BYTES)):
                while chunk and not inflater.eof:
                    total += len(inflater.decompress(chunk, _CHUNK_BYTES))
                    chunk = inflater.unconsumed_tail
    except zlib.error:
        return total, False
    return total, (True if inflater.eof else None)
