"""A small learning probe shared by the SSM tests: remember the first token of 1,024."""

from __future__ import annotations

import torch

from longarena import mixers


class _FirstTokenClassifier(torch.nn.Module):
    """Embedding, one residual mixer layer, LayerNorm, a linear head on the last position."""

    def __init__(self, name, d_model=16, **config):
        super().__init__()
        self.emb = torch.nn.Embedding(8, d_model)
        self.mixer = mixers.get(name, d_model, **config)
        self.norm = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, 4)

    def forward(self, tokens):
        x = self.emb(tokens)
        x = x + self.mixer(x)[0]
        return self.head(self.norm(x)[:, -1])


def _first_token_batch(g, batch, length=1024):
    """The label (0..3) is the first token; the other 1,023 are random noise tokens (4..7)."""
    tokens = torch.randint(4, 8, (batch, length), generator=g)
    label = torch.randint(0, 4, (batch,), generator=g)
    tokens[:, 0] = label
    return tokens, label


def train_first_token(name, steps, **config):
    """Token accuracy after ``steps`` of Adam on the first-token task at T = 1,024."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = _FirstTokenClassifier(name, **config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        tokens, label = _first_token_batch(g, 16)
        loss = torch.nn.functional.cross_entropy(model(tokens), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tokens, label = _first_token_batch(torch.Generator().manual_seed(99), 256)
        return (model(tokens).argmax(-1) == label).float().mean().item()
