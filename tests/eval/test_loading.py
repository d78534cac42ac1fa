"""Finding a checkpoint's tokenizer and data, and refusing a tokenizer that cannot be its own."""
import json

import pytest

from cart.eval.loading import check_tokenizer, find_data_dir, load_for_eval, training_seq_len
from tests.eval.helpers import ByteTokenizer, save_checkpoint, tiny_cart


def _data(tmp_path, name="prepared"):
    d = tmp_path / name
    d.mkdir()
    (d / "manifest.json").write_text("{}")
    return d


def test_data_dir_from_the_trainers_record(tmp_path):
    data = _data(tmp_path)
    ck = save_checkpoint(tiny_cart(), tmp_path / "run")
    assert find_data_dir(tmp_path / "run") is None
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"data": {"root": str(data)}, "config": {"seq_len": 48}}))
    assert find_data_dir(tmp_path / "run") == data.resolve()
    assert find_data_dir(ck) == data.resolve()  # from the checkpoint dir: the run dir's record
    assert training_seq_len(ck) == 48
    (ck / "train_config.json").write_text(json.dumps({"config": {"data": "../../../prepared", "seq_len": 16}}))
    assert find_data_dir(ck) == data.resolve()  # relative to the folder that records it
    assert training_seq_len(ck) == 16
    (ck / "train_config.json").write_text(json.dumps({"config": {"data": str(tmp_path / "moved")}}))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        find_data_dir(ck)


def test_explicit_tokenizer_wins_when_the_data_moved(tmp_path):
    ck = save_checkpoint(tiny_cart(), tmp_path / "run")
    (ck / "train_config.json").write_text(json.dumps({"data": {"root": str(tmp_path / "gone"), "tokenizer_sha256": "0" * 64}}))
    setup = load_for_eval(tmp_path / "run", tokenizer=ByteTokenizer())
    assert setup.data_dir is None and setup.tokenizer.name == "bytes"
    with pytest.raises(FileNotFoundError):
        load_for_eval(tmp_path / "run")


def test_tokenizer_checks():
    model = tiny_cart(vocab=260)  # padded by two rows: accepted
    check_tokenizer(model, ByteTokenizer())
    with pytest.raises(ValueError, match="embedding has 200"):
        check_tokenizer(tiny_cart(vocab=200), ByteTokenizer())
    with pytest.raises(ValueError, match="built for 1,000"):
        check_tokenizer(tiny_cart(vocab=1000), ByteTokenizer())
    with pytest.raises(ValueError, match="sha256"):
        check_tokenizer(model, ByteTokenizer(), expected_sha256="f" * 64)
