"""`TrainLoader`: [B, T+1] training windows, domain-interleaved, resumable, sharded across ranks.

Notable features:
- single-domain chunks on the recipe's cycle, as in the paper (e.g. {tiny: 3, wiki: 3, edu: 4}
  gives the 10-chunk cycle t t t w w w e e e e): one chunk is one training row of T+1 tokens;
  consecutive rows of a domain overlap by one token, so every token is a target once per epoch;
- the data order is a pure function of the global row index: row n of the whole run is chunk
  `n mod len(cycle)` of the cycle, and the k-th row of a domain starts at token `k*T` (mod the
  domain's length). No seed enters: seeds change only initialisation;
- sharding contract: with per-rank batch B and world size W, rank r at step s gets rows
  r*B .. (r+1)*B-1 (a contiguous block) of the global batch of B*W rows that a single process with
  batch B*W gets at step s; so any DDP layout with the same global batch sees the same data;
- `state_dict()` is the step plus what fixes the order (T, global batch, cycle) and the epochs
  completed per domain; `load_state_dict` refuses a state from a different layout and resumes
  bit-identically; a domain that runs out wraps to its start and counts an epoch;
- verified at start: every training file's sha256 is checked against the manifest once, in the same
  pass as the token-id check (a file whose content changed but whose size did not is refused);
- cheap: B memmap slices per step into one int64 array (no per-token Python);
- document ids (`document_ids=True`, off by default as in the paper): each batch comes with the
  index of the document every token belongs to (a running count of BOS tokens in its row), which
  the models turn into a block-diagonal causal mask so attention does not cross documents.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from cart.data.manifest import Manifest

__all__ = ["TrainLoader", "document_ids"]


def document_ids(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """The document each token belongs to, per row: the number of BOS tokens up to and including it
    (tokens before a row's first BOS continue a document from an earlier row: id 0)."""
    return (tokens == bos_id).cumsum(dim=-1)


class TrainLoader:
    def __init__(self, manifest: Manifest | str | os.PathLike, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, cycle: dict[str, int] | None = None, check_ids: bool = True,
                 document_ids: bool = False, verify: bool = True):
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.document_ids = bool(document_ids)
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"TrainLoader: batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"TrainLoader: rank {rank} is outside world_size {world_size}")
        self.batch_size, self.seq_len, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.global_batch = batch_size * world_size
        self.cycle = dict(cycle if cycle is not None else self.manifest.cycle)
        unknown = set(self.cycle) - set(self.manifest.train_domains)
        if unknown or not self.cycle:
            raise ValueError(f"TrainLoader: cycle {self.cycle} names domains not in {self.manifest.root} "
                             f"(training domains: {self.manifest.train_domains})")
        if any(not isinstance(v, int) or v < 1 for v in self.cycle.values()):
            raise ValueError(f"TrainLoader: cycle counts must be positive integers, got {self.cycle}")

        self.domains = list(self.cycle)
        # verified once, here: each file's sha256 against the manifest, with the id check in the same pass
        self._files = [self.manifest.train_file(d, check_ids=check_ids, verify=verify).tokens for d in self.domains]
        # rows per epoch of each domain: windows of T+1 starting at 0, T, 2T, ...
        self._rows_per_epoch = np.array([(len(f) - 1) // seq_len for f in self._files], dtype=np.int64)
        small = [d for d, r in zip(self.domains, self._rows_per_epoch) if r < 1]
        if small:
            raise ValueError(f"TrainLoader: domain(s) {small} hold fewer than seq_len+1 = {seq_len + 1} tokens")
        # the cycle expanded: for each slot, its domain and its rank among that domain's slots
        self._slot_domain = np.concatenate([np.full(c, i) for i, c in enumerate(self.cycle.values())]).astype(np.int64)
        self._slot_rank = np.concatenate([np.arange(c) for c in self.cycle.values()]).astype(np.int64)
        self._per_cycle = np.array(list(self.cycle.values()), dtype=np.int64)
        self.step = 0

    # -- the order: a pure function of the global row index
    def _rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(domain index, row index within the domain, counted across epochs) of this rank's rows at `step`."""
        n = step * self.global_batch + self.rank * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        L = len(self._slot_domain)
        slot = n % L
        dom = self._slot_domain[slot]
        k = (n // L) * self._per_cycle[dom] + self._slot_rank[slot]
        return dom, k

    def batch_at(self, step: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """This rank's batch at `step`, without moving the position: LongTensor [batch_size, seq_len+1];
        with document_ids, (tokens, document ids) of the same shape."""
        dom, k = self._rows(step)
        T = self.seq_len
        out = np.empty((self.batch_size, T + 1), dtype=np.int64)
        starts = (k % self._rows_per_epoch[dom]) * T
        for i in range(self.batch_size):
            out[i] = self._files[dom[i]][starts[i]:starts[i] + T + 1]
        tokens = torch.from_numpy(out)
        return (tokens, document_ids(tokens, self.manifest.bos_id)) if self.document_ids else tokens

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    # -- position
    def _rows_consumed(self) -> np.ndarray:
        """Rows of each domain taken by all ranks in steps 0 .. step-1."""
        n = self.step * self.global_batch
        L = len(self._slot_domain)
        full, rest = divmod(n, L)
        taken = full * self._per_cycle
        np.add.at(taken, self._slot_domain[:rest], 1)
        return taken

    def seen_spans(self) -> list[tuple[str, np.ndarray, int, int]]:
        """What all ranks trained on in steps 0 .. step-1, per domain, as (domain, token array, n, times):
        the targets tokens[1 .. n], each given its predecessor, were seen `times` times (a domain that
        wrapped contributes its whole epoch span once per full epoch, plus the partial epoch)."""
        out = []
        for d, f, taken, rpe in zip(self.domains, self._files, self._rows_consumed(), self._rows_per_epoch):
            full, rest = divmod(int(taken), int(rpe))
            if full:
                out.append((d, f, int(rpe) * self.seq_len, full))
            if rest:
                out.append((d, f, rest * self.seq_len, 1))
        return out

    @property
    def epochs_completed(self) -> dict[str, int]:
        """Full passes over each domain so far (all ranks together)."""
        return {d: int(e) for d, e in zip(self.domains, self._rows_consumed() // self._rows_per_epoch)}

    @property
    def tokens_seen(self) -> int:
        """Training tokens (targets) consumed by all ranks so far."""
        return self.step * self.global_batch * self.seq_len

    def state_dict(self) -> dict:
        return {"step": self.step, "seq_len": self.seq_len, "global_batch": self.global_batch, "cycle": dict(self.cycle),
                "epochs_completed": self.epochs_completed, "data": self.manifest.name,
                "train_sha256": {d: self.manifest.train[d].sha256 for d in self.domains}}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seq_len", self.seq_len), ("global_batch", self.global_batch), ("cycle", dict(self.cycle))):
            if state.get(key) != mine:
                raise ValueError(f"TrainLoader.load_state_dict: saved {key}={state.get(key)!r} differs from this loader's "
                                 f"{mine!r}: the data order would not continue where it stopped")
        saved = state.get("train_sha256", {})
        changed = [d for d in self.domains if d in saved and saved[d] != self.manifest.train[d].sha256]
        if changed:
            raise ValueError(f"TrainLoader.load_state_dict: training data of {changed} changed since the state was saved")
        self.step = int(state["step"])
        if state.get("epochs_completed") not in (None, self.epochs_completed):
            raise ValueError(f"TrainLoader.load_state_dict: saved epochs {state['epochs_completed']} disagree with "
                             f"step {self.step} ({self.epochs_completed}); the data files changed size")
