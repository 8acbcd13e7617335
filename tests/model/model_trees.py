"""Tiny real trees shared by the model tests."""

from cortex.model import NeuralTreeConfig

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYIAK", "GSHMLEDPVAG"]


def tiny_root(root_type: str, **overrides) -> dict:
    base = {
        "type": root_type,
        "max_length": 32,
        "embed_dim": 16,
        "channel_dim": 16,
        "out_dim": 16,
        "num_blocks": 2,
    }
    return {**base, **overrides}


def tiny_branch(branch_type: str, **overrides) -> dict:
    base = {"type": branch_type, "out_dim": 8}
    if branch_type != "mlp":
        base["channel_dim"] = 8
    return {**base, **overrides}


def two_root_config(**branch_overrides) -> NeuralTreeConfig:
    """Two roots of different widths, 2 regressors on an ensemble branch and an MLM leaf."""
    return NeuralTreeConfig(
        roots={"seq": tiny_root("conv1d"), "seq_t": tiny_root("transformer", out_dim=8, channel_dim=8)},
        trunk={"type": "sum", "roots": ["seq", "seq_t"]},
        branches={
            "property": tiny_branch("mlp", ensemble_size=2, **branch_overrides),
            "generation": tiny_branch("conv1d"),
        },
        leaves={
            "expression": {"type": "regressor", "branch": "property", "out_dim": 2},
            "binding": {"type": "regressor", "branch": "property"},
            "seq_mlm": {"type": "mlm", "branch": "generation", "root": "seq"},
        },
    )


def antiberty_files():
    """(model directory, vocab.txt) of the AntiBERTy checkpoint shipped in the `antiberty` package."""
    import importlib.resources

    models = importlib.resources.files("antiberty") / "trained_models"
    return str(models / "AntiBERTy_md_smooth"), str(models / "vocab.txt")


def tiny_bert_root() -> dict:
    """A random tiny BERT root on the AntiBERTy vocabulary (space-separated residues)."""
    hf_config = {
        "model_type": "bert", "vocab_size": 25, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 64, "pad_token_id": 0,
    }  # fmt: skip
    return {
        "type": "hf",
        "hf_config": hf_config,
        "tokenizer_path": antiberty_files()[1],
        "space_separated": True,
    }


ESM_VOCAB = [
    "<cls>",
    "<pad>",
    "<eos>",
    "<unk>",
    "L",
    "A",
    "G",
    "V",
    "S",
    "E",
    "R",
    "T",
    "I",
    "D",
    "P",
    "K",
    "Q",
    "N",
    "F",
    "Y",
    "M",
    "H",
    "W",
    "C",
    "X",
    "B",
    "U",
    "Z",
    "O",
    ".",
    "-",
    "<null_1>",
    "<mask>",
]


def tiny_esm_root(directory) -> dict:
    """A random tiny ESM root with a tokenizer written to `directory` from a local vocabulary."""
    import os

    from transformers import EsmTokenizer

    vocab_path = os.path.join(directory, "vocab.txt")
    with open(vocab_path, "w") as handle:
        handle.write("\n".join(ESM_VOCAB) + "\n")
    tokenizer_dir = os.path.join(directory, "esm_tokenizer")
    EsmTokenizer(vocab_file=vocab_path).save_pretrained(tokenizer_dir)
    hf_config = {
        "model_type": "esm", "vocab_size": len(ESM_VOCAB), "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 66, "pad_token_id": 1,
        "mask_token_id": 32, "token_dropout": False, "position_embedding_type": "absolute",
    }  # fmt: skip
    return {"type": "hf", "hf_config": hf_config, "tokenizer_path": tokenizer_dir}
