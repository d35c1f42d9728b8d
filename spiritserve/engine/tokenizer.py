"""The LM's SentencePiece tokenizer: prompt strings to ids and generated ids back to text and units.

Spirit LM's markers (`[Text]`, `[Speech]`) and unit tokens (`[Hu0]`…, `[Pi0]`…, `[St0]`…) are ordinary
pieces of the extended Llama-2 vocabulary. The reference encodes each prompt as *one* string with the slow
SentencePiece tokenizer (BOS prepended, no EOS), which yields `<s> ▁ [Text] The …` — the dummy prefix
becomes a lone `▁` and the first word after a marker has no `▁`. transformers 5's tokenizers-backed
LlamaTokenizer gives different ids, so we call SentencePiece directly (spiritlm-compat.md §3.2a).
Ids are always looked up from the model file, never hard-coded.
"""

from dataclasses import dataclass
from pathlib import Path

from spiritserve.errors import CheckpointError
from spiritserve.tokens import MARKERS, UNIT_KINDS, UnitKind, unit_piece
from spiritserve.weights import read_sentencepiece


@dataclass(frozen=True)
class TokenPiece:
    """One generated token, classified: a modality marker, a unit, or text (by id)."""

    token_id: int
    marker: str | None = None
    unit_kind: UnitKind | None = None
    unit: int | None = None


class SpiritTextTokenizer:
    """Wraps `tokenizer.model`; knows which ids are markers, which are units, which are text."""

    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path
        self._sp = read_sentencepiece(model_path)
        missing_markers = [marker for marker in MARKERS if self._sp.PieceToId(marker) == self._sp.unk_id()]
        if missing_markers:
            raise CheckpointError(f"{model_path}: no pieces for the modality markers {missing_markers}")
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self.marker_ids = {marker: self._sp.PieceToId(marker) for marker in MARKERS}
        self.unit_ids: dict[UnitKind, list[int]] = {kind: self._unit_ids(kind) for kind in UNIT_KINDS}
        self._id_to_unit = {
            token_id: (kind, unit) for kind, ids in self.unit_ids.items() for unit, token_id in enumerate(ids)
        }
        if not self.unit_ids["Hu"]:
            raise CheckpointError(f"{model_path}: no [Hu*] unit pieces; not a Spirit LM tokenizer")
        special = set(self.marker_ids.values()) | set(self._id_to_unit)
        self.text_ids = [i for i in range(self._sp.GetPieceSize()) if i not in special]

    def _unit_ids(self, kind: UnitKind) -> list[int]:
        """Ids of `[<kind>0]`, `[<kind>1]`, … up to the first gap."""
        ids = []
        while (token_id := self._sp.PieceToId(unit_piece(kind, len(ids)))) != self._sp.unk_id():
            ids.append(token_id)
        return ids

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def is_expressive(self) -> bool:
        """The expressive vocabulary adds pitch and style pieces; that, not a folder name, picks the variant."""
        return bool(self.unit_ids["Pi"]) and bool(self.unit_ids["St"])

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids exactly as the reference feeds the LM: BOS + SentencePiece(whole string), no EOS."""
        return [self.bos_id, *self._sp.EncodeAsIds(prompt)]

    def classify(self, token_id: int) -> TokenPiece:
        for marker, marker_id in self.marker_ids.items():
            if token_id == marker_id:
                return TokenPiece(token_id, marker=marker)
        if token_id in self._id_to_unit:
            kind, unit = self._id_to_unit[token_id]
            return TokenPiece(token_id, unit_kind=kind, unit=unit)
        return TokenPiece(token_id)

    def decode_text(self, token_ids: list[int]) -> str:
        return self._sp.DecodeIds(token_ids)

    def pieces(self, token_ids: list[int]) -> list[str]:
        return [self._sp.IdToPiece(token_id) for token_id in token_ids]
