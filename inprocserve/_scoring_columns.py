"""The columns of a CSV or Parquet file read as a model's inputs by name, for the ``score`` command.

A model of several inputs, or of text, cannot take a file's columns as one float matrix: what skl2onnx exports
for a scikit-learn pipeline over a data frame takes one input per column (``age``, ``income``, ``city``, the
last one text). Each input takes the column named after it, or, for an input of several features per row,
the columns ``<input>_0``, ``<input>_1``, ... (the names the command gives an output's columns). Columns no
input takes (an id, a label) are skipped. A one-input numeric model whose input no column names keeps the
matrix reading (:mod:`._scoring_readers`). A data frame given to ``predict_many`` is read the same way."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import InvalidInputError
from ._scoring_inputs import readable
from ._signature import Signature, TensorSpec

__all__ = [
    "pandas_index_columns",
    "ColumnPlan",
    "InputColumns",
    "first_integer_outside",
    "frame_inputs",
    "is_arrow_table",
    "is_data_frame",
    "whole_array_of",
    "needs_named_columns",
    "plan_columns",
    "to_float",
]

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


@dataclass(frozen=True)
class InputColumns:
    """Where one input's values are: the positions of its columns in the file, in feature order."""

    name: str
    dtype: np.dtype[Any]
    """``object`` for a text input."""
    positions: tuple[int, ...]
    labels: tuple[str, ...]
    """The columns' names, for messages."""
    rank: int
    """1: ``(rows,)``; 2: ``(rows, features)``."""


@dataclass(frozen=True)
class ColumnPlan:
    """Every input of the model and the columns it takes; ``width``: the columns the file names."""

    inputs: tuple[InputColumns, ...]
    width: int

    def arrays(self, rows: Sequence[Sequence[str]], lines: Sequence[int], source: str) -> dict[str, np.ndarray]:
        """The inputs of a chunk of a CSV file's rows (their fields as text; ``lines``: each row's line number
        in the file, for messages).

        Raises:
            InvalidInputError: a row holds another number of fields than the header names, or a field is no
                value of its input's type (a number, ``true``/``false``), naming its line and column.
        """
        width = self.width
        for row, line in zip(rows, lines, strict=True):
            if len(row) != width and not (len(row) > width and not any(field.strip() for field in row[width:])):
                raise InvalidInputError(
                    f"input {source}, line {line}: {len(row)} fields where the header (line 1) names {width} "
                    "columns; every line needs a field for each column"
                )
        arrays: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            columns = [_column(spec, position, label, rows, lines, source) for position, label in _places(spec)]
            if spec.rank == 1:
                arrays[spec.name] = columns[0]
            else:
                arrays[spec.name] = np.stack(columns, axis=1) if len(columns) > 1 else columns[0].reshape(-1, 1)
        return arrays


def _places(spec: InputColumns) -> zip[tuple[int, str]]:
    return zip(spec.positions, spec.labels, strict=True)


def _column(
    spec: InputColumns, position: int, label: str, rows: Sequence[Sequence[str]], lines: Sequence[int], source: str
) -> np.ndarray:
    values = [row[position] for row in rows]
    if spec.dtype == np.dtype(object):
        return np.array(values, dtype=object)
    if spec.dtype == np.dtype(np.bool_):
        flags = []
        for value, line in zip(values, lines, strict=True):
            word = value.strip().lower()
            if word not in _TRUE and word not in _FALSE:
                raise _bad_field(source, line, label, value, spec, "true or false (or 1 or 0)")
            flags.append(word in _TRUE)
        return np.array(flags, dtype=np.bool_)
    kind = "an integer" if spec.dtype.kind in "iu" else "a number"
    try:
        with np.errstate(over="ignore"):  # (a float too large for its type: checked below)
            column = np.array(values, dtype=spec.dtype)  # Python's int() and float() read each text
    except (ValueError, OverflowError):
        pass
    else:
        if any("_" in value for value in values):  # Python's int() and float() take 1_000; numpy's file readers do not
            for value, line in zip(values, lines, strict=True):
                if "_" in value:
                    raise _bad_field(source, line, label, value, spec, f"{kind} (digits grouped with '_' are not)")
        if spec.dtype.kind == "f" and np.isinf(column).any():  # a number its type cannot hold became infinity
            for value, line, number in zip(values, lines, column, strict=True):
                if np.isinf(number) and value.strip().lstrip("+-").lower() not in ("inf", "infinity"):
                    wanted = f"a number that {spec.dtype} holds (±{np.finfo(spec.dtype).max})"
                    raise _bad_field(source, line, label, value, spec, wanted)
        return column
    for value, line in zip(values, lines, strict=True):  # the first field that fails: only on this error path
        try:
            np.array([value], dtype=spec.dtype)
        except (ValueError, OverflowError) as exc:
            wanted = f"{kind} that {spec.dtype} holds" if isinstance(exc, OverflowError) else kind
            raise _bad_field(source, line, label, value, spec, wanted) from None
    raise InvalidInputError(  # pragma: no cover - numpy refused the column but accepts each of its fields
        f"input {source}: column {label!r} cannot be read as {spec.dtype} for input {spec.name!r}"
    )


def _bad_field(source: str, line: int, label: str, value: str, spec: InputColumns, wanted: str) -> InvalidInputError:
    if not value.strip():
        return InvalidInputError(
            f"input {source}, line {line}: column {label!r} is empty (a missing value); input {spec.name!r} "
            f"needs {wanted} in every row (fill or drop missing values first)"
        )
    return InvalidInputError(
        f"input {source}, line {line}: column {label!r} holds {value[:80]!r}, not {wanted} (input {spec.name!r} "
        f"takes {spec.dtype})"
    )


def needs_named_columns(signature: Signature) -> bool:
    """Whether the model's inputs can only come from named columns: several inputs, or a text input."""
    return len(signature.inputs) != 1 or signature.inputs[0].is_string


def plan_columns(
    signature: Signature, header: Sequence[str], source: str | None, *, noun: str = "data frame"
) -> ColumnPlan | None:
    """Map the file's columns (``header``: their names) to the model's inputs; ``None`` for a one-input
    numeric model whose input no column names, or not as its columns (the file is read as its matrix).
    ``source``: the file's path, for messages; ``None`` for a data frame (``header``: its column labels), or
    what ``noun`` names (an Arrow table).

    Raises:
        InvalidInputError: an input with no column, an input columns cannot hold (more than two axes, not a
            tensor), a column named twice, another number of columns than the input's features, or columns of
            an input both by its name and numbered.
    """
    where = f"the {noun}" if source is None else f"input {source}"
    names = [name.strip() for name in header]
    while names and not names[-1]:  # a spreadsheet's trailing separators name no column
        names.pop()
    if not needs_named_columns(signature):
        # A one-input numeric model's file was read as its matrix before columns were read by name: a header
        # that names the input but not as its columns (`x,y` for x [N, 2]) keeps that reading. One that
        # numbers them (`x_0`) names them, if wrongly: read as the matrix, `row_id,x_0,x_1,x_3` for x [N, 4]
        # scored the ids as the first feature and never said that x_2 was missing.
        try:
            found = _input_columns(signature.inputs[0], names, where, frozenset())
        except InvalidInputError:
            if f"{signature.inputs[0].name}_0" in names:
                raise
            return None
        if found is None or (found.rank == 2 and found.labels == (found.name,) and _features(signature.inputs[0]) != 1):
            # (`x,y,z` for x [N, M]: the columns of a matrix whose first is called x, not one feature x)
            return None
        return ColumnPlan((found,), len(names))
    inputs = []
    others = frozenset(spec.name for spec in signature.inputs)
    for spec in signature.inputs:
        found = _input_columns(spec, names, where, others - {spec.name})
        if found is None:
            place = (
                "in the header, the file's first line (it names"
                if source is not None
                else f"(the {noun.split()[-1]} has"
            )
            raise InvalidInputError(
                f"{where}: no column for the model's input {spec.describe()}; name a column {spec.name!r}"
                f"{_numbered_hint(spec)} {place} {', '.join(map(repr, names)) or 'nothing'})"
            )
        inputs.append(found)
    return ColumnPlan(tuple(inputs), len(names))


def _numbered_hint(spec: TensorSpec) -> str:
    if spec.shape is not None and len(spec.shape) == 1:
        return ""
    return f", or {spec.name + '_0'!r}, {spec.name + '_1'!r}, ... for its features"


def _input_columns(spec: TensorSpec, names: list[str], where: str, others: frozenset[str]) -> InputColumns | None:
    """``where``: the file or frame, for messages; ``others``: the model's other inputs, whose columns are theirs
    (inputs `x` and `x_0`: `x_0` is not x's)."""
    rank = 2 if spec.shape is None else len(spec.shape)
    fixed = _features(spec)
    numbered: list[str] = []
    while f"{spec.name}_{len(numbered)}" in names and f"{spec.name}_{len(numbered)}" not in others:
        numbered.append(f"{spec.name}_{len(numbered)}")
    if spec.name not in names and not numbered:
        return None
    stray = {
        name
        for name in names
        if name not in others and name.startswith(f"{spec.name}_") and name[len(spec.name) + 1 :].isdigit()
    }
    if numbered and len(stray) > len(numbered):  # (a_0, a_1, a_3: a_3 would be skipped as a column no input takes)
        missing = next(f"{spec.name}_{k}" for k in itertools.count() if f"{spec.name}_{k}" not in names)
        raise InvalidInputError(
            f"{where}: the model's input {spec.describe()} has columns up to {max(stray, key=_number)!r} "
            f"but no {missing!r}: its numbered columns run from {spec.name}_0 with none left out"
        )
    what = f"{where}: the model's input {spec.describe()}"
    if spec.dtype is None:
        raise InvalidInputError(f"{what} is not a tensor; a file's columns cannot hold it")
    if rank not in (1, 2):
        raise InvalidInputError(f"{what} has {rank} axes; columns hold one or more values per row: use .npz")
    if spec.name in names and numbered:
        raise InvalidInputError(
            f"{what} has a column {spec.name!r} and columns {numbered[0]!r}...: keep one or the other"
        )
    if numbered and rank == 1:
        raise InvalidInputError(f"{what} takes one value per row: name its column {spec.name!r}")
    labels = numbered or [spec.name]
    if fixed is not None and len(labels) != fixed:
        hint = f"column {spec.name!r}" if fixed == 1 else f"columns {spec.name}_0 to {spec.name}_{fixed - 1}"
        holder = "the file" if where.startswith("input ") else f"the {where.split()[-1]}"  # (a frame, a table)
        raise InvalidInputError(f"{what} takes {fixed} values per row; {holder} has {len(labels)}: name {hint}")
    for label in labels:
        if names.count(label) > 1:
            raise InvalidInputError(f"{where} has two columns named {label!r}: rename or drop one")
    return InputColumns(spec.name, spec.dtype, tuple(names.index(label) for label in labels), tuple(labels), rank)


def _features(spec: TensorSpec) -> int | None:
    """The input's fixed number of values per row (its second axis), or ``None``: open, or another rank."""
    features = spec.shape[1] if spec.shape is not None and len(spec.shape) == 2 else None
    return features if isinstance(features, int) else None


def _number(label: str) -> int:
    return int(label.rpartition("_")[2])


def is_data_frame(value: Any) -> bool:
    """Whether ``value`` is a data frame (pandas', polars'): columns, each read as ``value[label]``, and
    ``to_numpy()``; or a pyarrow ``Table`` or ``RecordBatch`` (:func:`is_arrow_table`).

    Iterated, a frame yields its column labels, which ``predict_many`` took for batches ("a batch needs a leading
    row axis; got a scalar str", or "scalar int" for ``pd.DataFrame(matrix)``'s labels 0, 1, ...). Recognised by
    its shape, not its class: neither library is a dependency."""
    if isinstance(value, (np.ndarray, str, bytes, Mapping)) or not hasattr(value, "__getitem__"):
        return False
    if not hasattr(type(value), "columns"):  # (a frame's class has them, as Signature.validate asks: the same answer)
        return False  # (asked first: a list, tuple or generator of batches pays this lookup alone)
    if is_arrow_table(value):
        return True
    columns = getattr(value, "columns", None)
    if columns is None or not hasattr(value, "shape") or callable(columns):
        return False
    if not callable(getattr(value, "to_numpy", None)):
        return False  # (a pyarrow Table's columns are its arrays; it has no to_numpy)
    try:
        iter(columns)
    except TypeError:
        return False
    return True


def is_arrow_table(value: Any) -> bool:
    """Whether ``value`` is a pyarrow ``Table`` or ``RecordBatch`` (what ``pq.read_table`` returns, and what
    ``ParquetFile.iter_batches()`` and a dataset's ``to_batches()`` yield), by its class: pyarrow is not a
    dependency. Its ``columns`` are its arrays, not their names, and it has no ``to_numpy``."""
    kind = type(value)
    return kind.__name__ in ("Table", "RecordBatch") and kind.__module__.partition(".")[0] == "pyarrow"


class _ArrowColumn:
    """One column of a pyarrow ``Table`` (a ``ChunkedArray``) or ``RecordBatch`` (an ``Array``), read as numpy."""

    def __init__(self, column: Any, name: str) -> None:
        self._column = column
        self.type_name = str(column.type)
        self._name = name

    def to_numpy(self) -> np.ndarray:
        """The column's values.

        Raises:
            InvalidInputError: a type numpy has no array of (a union), naming the column.
        """
        try:
            return self._values()
        except (NotImplementedError, TypeError, ValueError) as exc:  # (pyarrow's ArrowNotImplementedError, ...)
            raise InvalidInputError(
                f"column {self._name!r} of the Arrow table holds {self.type_name} values, which numpy cannot hold "
                f"({exc}): convert the column (pyarrow: .cast(...))"
            ) from exc

    def _values(self) -> np.ndarray:
        # (a Table's chunks joined, a dictionary decoded; an Array copies only when told it may: its default
        # refuses a column with nulls, text or booleans)
        column = self._column
        if self.type_name == "null":  # (pa.table({"age": [None, None]}): no values, read as a float column's nulls)
            return np.full(len(column), np.nan)
        if hasattr(column.type, "index_type"):
            # A ChunkedArray's to_numpy decodes a dictionary by its indices, the index under a null too: another
            # row's category, or a number, in its place. Decoded first, a null stays one (None, or NaN).
            value_type = column.type.value_type
            if str(value_type) == "string_view":  # (pyarrow has no kernel to decode it: its text as large_string)
                import pyarrow as pa  # type: ignore[import-not-found, import-untyped, unused-ignore]

                value_type = pa.large_string()
                column = column.cast(pa.dictionary(column.type.index_type, value_type))
            column = column.cast(value_type)
        if column.null_count and str(column.type) == "bool":
            # (its to_numpy gives objects, True and None, refused as no numbers; as floats, a null is NaN as in an
            # integer column: a float input's NaN, a missing value by position for any other input)
            column = column.cast("float64")
        return np.asarray(column.to_numpy() if hasattr(column, "chunks") else column.to_numpy(zero_copy_only=False))


def _is_list(arrow_type: Any) -> bool:
    # list, large_list, list_view, fixed_size_list (and map) types have a value field; a dictionary has none. An
    # extension type by its storage: fixed_shape_tensor, Arrow's type for a vector per row, is a fixed_size_list
    return hasattr(getattr(arrow_type, "storage_type", arrow_type), "value_field")


class _ArrowColumns:
    """A pyarrow ``Table`` or ``RecordBatch`` seen as :func:`frame_inputs` reads a data frame: its column names,
    a column's values by name (a missing value as pandas has it: NaN in a number column, ``None`` in a text or
    boolean one), and the whole table as a matrix: without the columns that hold the index of the pandas frame
    it was made from (``df.to_parquet()``'s of an index other than 0, 1, ...), which pandas reads back as the
    frame's index: they were one more feature of the matrix. (An input named after one still takes it.)"""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.columns = list(table.column_names)

    def __getitem__(self, name: str) -> _ArrowColumn:
        # by position: a name may be given twice (a column no input takes; inputs' columns are checked unique)
        return _ArrowColumn(self._table.column(self.columns.index(name)), name)

    def refuse_lists(self, signature: Signature) -> None:
        """Refuse a column of lists (a vector per row, as embeddings are stored) named after an input: read as
        one column, it was "the file has 1" column of several features, or no number, without saying why.

        Raises:
            InvalidInputError: naming the column and how the input's values are given.
        """
        names = [name.strip() for name in self.columns]
        for spec in signature.inputs:
            if spec.name not in names:
                continue
            arrow_type = self._table.column(names.index(spec.name)).type
            if not _is_list(arrow_type):
                continue
            rank = 2 if spec.shape is None else len(spec.shape)
            how = (
                f"takes one column per feature: {spec.name}_0, {spec.name}_1, ...; or pass the inputs as a mapping "
                "of input name to array of shape (rows, features)"
                if rank == 2 and _features(spec) != 1
                else "takes one value per row: convert the column"
            )
            raise InvalidInputError(
                f"column {spec.name!r} of the Arrow table holds {arrow_type} values, a list per row; input "
                f"{spec.describe()} {how}"
            )

    def to_numpy(self) -> np.ndarray:
        """The columns side by side, each a number or boolean column (else an error naming it)."""
        values = []
        index = pandas_index_columns(self._table.schema)
        for position, name in enumerate(self.columns):
            if name in index:
                continue
            arrow = self._table.column(position)
            column = _ArrowColumn(arrow, name).to_numpy()
            if column.dtype.kind not in "biuf":  # (text, dates, lists)
                held = f"{arrow.type} values{' with nulls' if arrow.null_count else ''},"
                if _is_list(arrow.type):
                    held = f"{arrow.type} values, a list per row,"
                raise InvalidInputError(
                    f"column {name!r} of the Arrow table holds {held} not numbers; every "
                    "column is a feature of the model's one input (convert the column, or drop it)"
                )
            values.append(column)
        return np.column_stack(values) if values else np.empty((self._table.num_rows, 0), np.float32)


def pandas_index_columns(schema: Any) -> frozenset[str]:
    """The names of the columns that hold a pandas frame's index, from the schema's ``pandas`` metadata that
    ``pa.Table.from_pandas`` (and ``df.to_parquet()``) write; an index 0, 1, ... is written as a range, no column."""
    metadata = schema.metadata
    if not metadata or b"pandas" not in metadata:
        return frozenset()
    try:
        index = json.loads(metadata[b"pandas"]).get("index_columns", [])
    except (ValueError, AttributeError):  # (metadata another writer left: no index to leave out)
        return frozenset()
    return frozenset(name for name in index if isinstance(name, str)) if isinstance(index, list) else frozenset()


def frame_inputs(frame: Any, signature: Signature) -> Any:
    """The inputs of ``predict_many`` from a data frame's columns, by name as a file's (:func:`plan_columns`): a
    mapping of input name to array, or, for a one-input numeric model whose input no column names, the frame's
    values as its matrix.

    Raises:
        InvalidInputError: columns that do not fit the inputs (see :func:`plan_columns`), a missing value (None,
            NaN, pandas' NA) in a column a text, integer or boolean input takes (a float input's NaN is scored
            as an array's), or a column whose values its input's type cannot hold.
    """
    noun = "data frame"
    if is_arrow_table(frame):
        frame, noun = _ArrowColumns(frame), "Arrow table"
        frame.refuse_lists(signature)
    keys = list(frame.columns)  # pandas' may be numbers (pd.DataFrame(matrix)) or tuples: compared as text
    plan = plan_columns(signature, [str(key) for key in keys], None, noun=noun)
    if plan is None:
        return np.asarray(frame.to_numpy())
    arrays: dict[str, np.ndarray] = {}
    for spec in plan.inputs:
        places = list(_places(spec))
        first = _frame_column(frame, keys[places[0][0]], spec, places[0][1], noun)
        if spec.rank == 1 or len(places) == 1:
            arrays[spec.name] = first if spec.rank == 1 else first.reshape(-1, 1)
            continue
        # Each column is put in place as it is read: cast columns gathered and then stacked were the input twice
        matrix = np.empty((len(first), len(places)), first.dtype)
        matrix[:, 0] = first
        del first
        for index, (position, label) in enumerate(places[1:], start=1):
            matrix[:, index] = _frame_column(frame, keys[position], spec, label, noun)
        arrays[spec.name] = matrix
    return arrays


def _frame_column(frame: Any, key: Any, spec: InputColumns, label: str, noun: str) -> np.ndarray:
    column = frame[key]
    values = np.asarray(column.to_numpy())
    arrow = isinstance(column, _ArrowColumn)  # (its nulls come as NaN in a number column, None in others)
    where = f"column {label!r} of the {noun}"
    if spec.dtype == np.dtype(object):
        for position, value in enumerate(values):
            if not isinstance(value, str):
                # None, NaN, pandas' NA (a nullable "string" column's) and NaT
                missing = value is None or (isinstance(value, float) and value != value) or _is_na(value)
                if arrow and not missing:  # (its type, not a numpy scalar's: "a int64")
                    raise InvalidInputError(
                        f"{where} holds {column.type_name} values; input {spec.name!r} takes text: convert the "
                        "column (pyarrow: .cast(pa.string()))"
                    )
                what = "a missing value" if missing else f"a {type(value).__name__}, not text"
                raise InvalidInputError(
                    f"{where} holds {what} at position {position}; input {spec.name!r} takes text in every row"
                    f"{' (fill or drop missing values first)' if missing else ''}"
                )
        return values.astype(object, copy=False)
    if values.dtype.kind == "O" and spec.dtype.kind == "f":
        values = _booleans_as_floats(values)
    # A float input takes NaN as an array's does (the version's nan_policy decides); any other cannot hold it
    if spec.dtype.kind != "f" and values.dtype.kind == "f" and np.isnan(values).any():
        position = int(np.isnan(values).argmax())
        raise InvalidInputError(
            f"{where} has a missing value ({'null' if arrow else 'NaN'}) at position {position}; input {spec.name!r} "
            "needs a value in every "
            "row (fill or drop missing values first)"
        )
    if values.dtype.kind == "O" and spec.dtype.kind in "iub":
        # pandas' nullable "boolean" column (and polars' booleans) holding a missing value comes as objects
        nulls = [value is None or _is_na(value) or (isinstance(value, float) and value != value) for value in values]
        if any(nulls):
            position = nulls.index(True)
            raise InvalidInputError(
                f"{where} has a missing value ({values[position]}) at position {position}; input {spec.name!r} "
                "needs a value in every row (fill or drop missing values first)"
            )
    if values.dtype.kind not in "biuf" or (spec.dtype.kind in "iub" and values.dtype.kind == "f"):
        kind = "integers" if spec.dtype.kind in "iu" else "booleans" if spec.dtype.kind == "b" else "numbers"
        raise InvalidInputError(
            f"{where} holds {column.type_name if arrow else values.dtype} values; input {spec.name!r} takes "
            f"{spec.dtype} ({kind}): convert the column ({'pyarrow: .cast(...)' if arrow else 'pandas: .astype(...)'})"
        )
    if spec.dtype.kind == "b" and values.dtype.kind in "iu" and ((values != 0) & (values != 1)).any():
        position = int(((values != 0) & (values != 1)).argmax())
        raise InvalidInputError(  # (numpy's cast makes any other integer True; a file's column takes 0 or 1 too)
            f"{where} holds {values[position]} at position {position}; input {spec.name!r} takes booleans: "
            "True/False, or 1/0"
        )
    outside = first_integer_outside(values, spec.dtype)
    if outside is not None:
        info = np.iinfo(spec.dtype)
        raise InvalidInputError(
            f"{where} holds {values[outside]} at position {outside}, which {spec.dtype} does not hold "
            f"({info.min} to {info.max})"
        )
    if spec.dtype.kind == "f" and not np.can_cast(values.dtype, spec.dtype):
        cast, beyond = to_float(values, spec.dtype)
        if beyond is not None:
            raise InvalidInputError(
                f"{where} holds {values[beyond]} at position {beyond}, beyond what {spec.dtype} holds "
                f"(±{np.finfo(spec.dtype).max}): it would be scored as infinity"
            )
        return cast
    return values.astype(spec.dtype, copy=False)


def _booleans_as_floats(values: np.ndarray) -> np.ndarray:
    """``values`` (objects) as floats if each is a boolean or a missing value (None, NA, NaN): a frame's boolean
    column with a missing value (pandas' nullable ``boolean``, ``bool[pyarrow]``, ``to_pandas()`` of an Arrow
    one) comes as objects, and a float input takes it as an Arrow table's, or an integer column's: NaN for the
    missing value. Else ``values`` as they were (refused as objects)."""
    floats = np.empty(len(values))
    for position, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)):
            floats[position] = value
        elif value is None or (isinstance(value, float) and value != value) or type(value).__name__ == "NAType":
            floats[position] = np.nan
        else:
            return values
    return floats


def to_float(values: np.ndarray, dtype: np.dtype[Any]) -> tuple[np.ndarray, int | None]:
    """``values`` (numbers) cast to the float type ``dtype``, and the position of the first one too large for it
    (numpy's cast makes it infinity, silently, as 70000 in float16), or ``None``."""
    with np.errstate(over="ignore"):
        cast = values.astype(dtype, copy=False)
    infinite = np.isinf(cast)
    if infinite.any():
        beyond = infinite & ~np.isinf(values) if values.dtype.kind == "f" else infinite
        if beyond.any():
            return cast, int(beyond.argmax())
    return cast, None


def _is_na(value: object) -> bool:
    return type(value).__name__ in ("NAType", "NaTType")


def first_integer_outside(values: np.ndarray, dtype: np.dtype[Any]) -> int | None:
    """The position of the first integer of ``values`` that the integer ``dtype`` cannot hold (numpy's cast
    would wrap it around silently), or ``None``."""
    if values.dtype.kind not in "iu" or dtype.kind not in "iu" or not len(values) or np.can_cast(values.dtype, dtype):
        return None
    info = np.iinfo(dtype)
    outside = (values < info.min) | (values > info.max)
    return int(outside.argmax()) if outside.any() else None


def whole_array_of(value: Any) -> Any:
    """``value`` as a numpy array if it is an array of another library (a pandas ``Series``, a tensor): one
    whole input for ``predict_many``, not an iterable of batches; else ``value`` itself. Iterated, a ``Series``
    yields its values ("a batch needs a leading row axis; got a scalar float") and a 2-D tensor its rows, each
    taken for a batch of its own. A memoryview (no ``__array__``, a buffer) is one too, as ``predict`` takes it:
    iterated, it yields numbers ("got a scalar int"). Arrays, mappings, lists, tuples and generators stay what
    they were."""
    if isinstance(value, memoryview) and value.ndim:
        return np.asarray(value)
    if isinstance(value, (np.ndarray, Mapping, list, tuple, str, bytes)) or not hasattr(type(value), "__array__"):
        return value
    shape = getattr(value, "shape", None)
    if not isinstance(shape, tuple) or not shape:
        return value
    return readable(value, None)  # (a tensor that requires grad: torch's RuntimeError made the caller's error)
