import importlib.resources
import pathlib

import pandas as pd
import pytest
from transformers import BertTokenizer

DATA = pathlib.Path(__file__).parents[2] / "data"


@pytest.fixture(scope="session")
def gfp_rows() -> pd.DataFrame:
    """400 real GFP rows (both TAPE-like splits, some with stop codons)."""
    frame = pd.read_csv(DATA / "gfp_sarkisyan2016.csv.gz", nrows=4000)
    return pd.concat(
        [frame[frame.tape_like_split == "train"].head(300), frame[frame.tape_like_split == "test"].head(100)]
    )


@pytest.fixture(scope="session")
def rbd_rows() -> pd.DataFrame:
    return pd.read_csv(DATA / "rbd_starr2020_bind_expr.csv.gz")


@pytest.fixture(scope="session")
def bert_tokenizer() -> BertTokenizer:
    """AntiBERTy's real 25-token BERT vocabulary (needs space-separated residues)."""
    vocab = importlib.resources.files("antiberty") / "trained_models" / "vocab.txt"
    return BertTokenizer(vocab=str(vocab), do_lower_case=False)
