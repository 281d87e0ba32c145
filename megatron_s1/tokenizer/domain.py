"""Per-domain SentencePiece BPE models (SMILES, IUPAC, FASTA / PROT, XNA).

``DomainModel`` wraps one ``.model`` file: the ``sentencepiece`` library encodes for the Python reference, and
``read_model_proto`` exposes the pieces, scores and normalizer flags the C++ fast path re-implements.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import sentencepiece as spm

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPE_BPE = 2
SPACE_SYMBOL = "\u2581"  # '▁', SentencePiece's escaped space


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) of one protobuf message (value: int or bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


@dataclass
class ModelProtoInfo:
    """What the C++ encoder needs from a SentencePiece ModelProto."""
    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_type: int = 1
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    def native_unsupported_reason(self) -> str | None:
        """Why the C++ encoder cannot reproduce this model exactly (None when it can)."""
        if self.model_type != MODEL_TYPE_BPE:
            return "not a BPE model"
        if self.byte_fallback:
            return "byte_fallback is on"
        if self.treat_whitespace_as_suffix:
            return "treat_whitespace_as_suffix is on"
        if self.precompiled_charsmap:
            return f"normalizer {self.normalizer_name!r} has a character map (only 'identity' is native)"
        if UNUSED in self.types:
            return "the model has UNUSED pieces"
        return None


def read_model_proto(data: bytes) -> ModelProtoInfo:
    info = ModelProtoInfo([], [], [])
    for number, _, value in _fields(data):
        if number == 1:  # SentencePiece
            piece, score, ptype = "", 0.0, NORMAL
            for n, _, v in _fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    ptype = v
            info.pieces.append(piece)
            info.scores.append(score)
            info.types.append(ptype)
        elif number == 2:  # TrainerSpec
            for n, _, v in _fields(value):
                if n == 3:
                    info.model_type = v
                elif n == 24:
                    info.treat_whitespace_as_suffix = bool(v)
                elif n == 35:
                    info.byte_fallback = bool(v)
        elif number == 3:  # NormalizerSpec
            for n, _, v in _fields(value):
                if n == 1:
                    info.normalizer_name = v.decode("utf-8")
                elif n == 2:
                    info.precompiled_charsmap = bytes(v)
                elif n == 3:
                    info.add_dummy_prefix = bool(v)
                elif n == 4:
                    info.remove_extra_whitespaces = bool(v)
                elif n == 5:
                    info.escape_whitespaces = bool(v)
    return info


class DomainModel:
    """One domain's SentencePiece model placed at a global id offset."""

    def __init__(self, name: str, path: str, offset: int):
        if not os.path.exists(path):
            raise FileNotFoundError(f"domain model {path!r} for {name} is missing; train one with "
                                    "`megatron-s1 tokenizer train-domain`")
        self.name = name
        self.path = path
        self.offset = offset
        with open(path, "rb") as f:
            self.proto_bytes = f.read()
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto_bytes)
        self.size = self.sp.get_piece_size()
        self.unk_id = self.sp.unk_id()
        self.info = read_model_proto(self.proto_bytes)
        if len(self.info.pieces) != self.size:
            raise ValueError(f"{path}: parsed {len(self.info.pieces)} pieces but sentencepiece reports {self.size}")

    @property
    def id_range(self) -> tuple[int, int]:
        return self.offset, self.offset + self.size

    def encode_pieces(self, text: str) -> tuple[list[str], list[int]]:
        """(pieces, local ids) exactly as ``sentencepiece`` returns them (unknown runs merged, id 0)."""
        return self.sp.encode(text, out_type=str), self.sp.encode(text, out_type=int)

    def piece_text(self, local_id: int) -> str:
        """Surface text of a piece ('▁' back to a space); the unknown piece (never emitted) decodes to ''."""
        if self.sp.is_unknown(local_id):
            return ""
        return self.sp.id_to_piece(local_id).replace(SPACE_SYMBOL, " ")
