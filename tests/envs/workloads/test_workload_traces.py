import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

import envs.workloads.traces as traces_module
from envs.tokens import HashBlockTokens, UniqueTokens
from envs.workloads.traces import (DATA_DIR, TraceFormatError, TraceRowsSkippedWarning, TraceWorkload,
                                   load_arena_trace, load_azure_trace, load_mooncake_trace)
from tests.helpers import common_prefix


def mooncake():
    return TraceWorkload("mooncake-conversation", "", DATA_DIR / "mooncake_conversation_trace.jsonl.gz",
                         "mooncake")


def azure():
    return TraceWorkload("azure-conv", "", DATA_DIR / "azure_llm_2023_conv.csv.gz", "azure")


def arena():
    return TraceWorkload("arena-27", "", DATA_DIR / "vtc_chatbot_arena_27clients.csv", "arena")



# --- the shipped traces ----------------------------------------------------------------

def test_data_lives_inside_the_package():
    assert DATA_DIR == Path(traces_module.__file__).resolve().parent.parent / "data"
    source = Path(traces_module.__file__).read_text()
    assert "shared/data" not in source and "../shared" not in source
    for name in ("mooncake_conversation_trace.jsonl.gz", "azure_llm_2023_conv.csv.gz",
                 "vtc_chatbot_arena_27clients.csv", "licenses/Apache-2.0.txt", "licenses/CC-BY-4.0.txt",
                 "README.md"):
        assert (DATA_DIR / name).is_file(), name


def test_record_counts_and_nothing_skipped():
    assert len(load_mooncake_trace()) == 12_031
    assert len(load_arena_trace()) == 1_500
    azure_trace = load_azure_trace()
    assert len(azure_trace) == 19_366
    for trace in (load_mooncake_trace(), load_arena_trace(), azure_trace):
        assert trace.report.num_skipped == 0
        assert trace.report.rows_loaded == trace.report.rows_read == len(trace)


def test_loading_is_cached():
    assert load_azure_trace() is load_azure_trace()


def test_mooncake_first_rows():
    specs = mooncake().generate(0, num_requests=5)
    assert [s.prompt_len for s in specs] == [6758, 7322, 7236, 2290, 6760]
    assert [s.output_len for s in specs] == [500, 490, 794, 316, 3]
    assert all(s.arrival_time == 0.0 and s.client_id == 0 for s in specs)
    assert isinstance(specs[0].prompt, HashBlockTokens)
    assert specs[0].prompt.hash_ids == tuple(range(14))
    assert specs[1].prompt.hash_ids[:2] == (0, 14)
    full = load_mooncake_trace()
    assert full.arrival_s[-1] == pytest.approx(3536.999)


def test_mooncake_shared_hash_prefixes_share_block_keys():
    trace = load_mooncake_trace()
    rows = list(range(40)) + [66, 133, 134, 137]  # the last four share 5 to 26 hash blocks with earlier rows
    specs = mooncake().generate(0)
    keys = {r: specs[r].prompt.block_keys(16) for r in rows}
    checked_long = 0
    for a, i in enumerate(rows):
        for j in rows[a + 1:]:
            hashes = common_prefix(trace.hash_ids[i], trace.hash_ids[j])
            shared_tokens = min(hashes * 512, specs[i].prompt_len, specs[j].prompt_len)
            assert common_prefix(keys[i], keys[j]) == shared_tokens // 16
            checked_long += hashes >= 5
    assert checked_long >= 3


def test_mooncake_known_pair_sharing_five_blocks():
    trace = load_mooncake_trace()
    assert trace.hash_ids[66][:5] == trace.hash_ids[133][:5] and trace.hash_ids[66][5] != trace.hash_ids[133][5]
    specs = mooncake().generate(0)
    a, b = specs[66].prompt.block_keys(16), specs[133].prompt.block_keys(16)
    assert a[:160] == b[:160] and a[160] != b[160]


def test_azure_first_rows():
    specs = azure().generate(0, num_requests=4)
    assert [s.prompt_len for s in specs] == [374, 396, 879, 91]
    assert [s.output_len for s in specs] == [44, 109, 55, 16]
    assert [s.arrival_time for s in specs] == pytest.approx([0.0, 4.314579, 4.541877, 4.710427], abs=1e-9)
    assert isinstance(specs[0].prompt, UniqueTokens)
    # 18:15:46.6805900 -> 19:14:08.4025270
    assert load_azure_trace().arrival_s[-1] == pytest.approx(3501.721937, abs=1e-9)


def test_azure_prompts_share_nothing():
    keys = [set(s.prompt.block_keys(16)) for s in azure().generate(0, num_requests=200)]
    union = set().union(*keys)
    assert len(union) == sum(len(k) for k in keys)


def test_arena_first_rows_and_clients():
    specs = arena().generate(0)
    assert len(specs) == 1500
    assert [(s.client_id, s.prompt_len, s.output_len) for s in specs[:3]] == [(13, 13, 199), (2, 36, 137),
                                                                              (0, 456, 156)]
    assert specs[1].arrival_time == pytest.approx(0.207938)
    counts = np.bincount([s.client_id for s in specs])
    assert len(counts) == 27 and counts[2] == 296 and counts[10] == 262 and counts[26] == 1


def test_slices_shift_time_and_keep_content():
    w = azure()
    full = w.generate(0)
    part = w.generate_slice(100, 50)
    assert [s.request_id for s in part] == list(range(50))
    assert part[0].arrival_time == 0.0
    for k, s in enumerate(part):
        ref = full[100 + k]
        assert s.arrival_time == pytest.approx(ref.arrival_time - full[100].arrival_time, abs=1e-9)
        assert (s.prompt_len, s.output_len) == (ref.prompt_len, ref.output_len)
        assert s.prompt.block_keys(16) == ref.prompt.block_keys(16)
    via_generate = w.generate(0, num_requests=50, start_index=100)
    assert [(s.arrival_time, s.prompt_len) for s in via_generate] == [(s.arrival_time, s.prompt_len) for s in part]


def test_seed_does_not_change_a_trace():
    a = [(s.arrival_time, s.prompt_len, s.output_len) for s in arena().generate(0, 100)]
    b = [(s.arrival_time, s.prompt_len, s.output_len) for s in arena().generate(12345, 100)]
    assert a == b


def test_slice_outside_trace_is_refused():
    with pytest.raises(ValueError, match=r"rows \[1490, 1510\).*1500"):
        arena().generate_slice(1490, 20)
    with pytest.raises(ValueError, match="outside"):
        arena().generate(0, num_requests=10, start_index=-1)


def test_unknown_format_refused():
    with pytest.raises(ValueError, match="unknown format 'parquet'"):
        TraceWorkload("x", "", DATA_DIR / "x", "parquet")


# --- malformed input -------------------------------------------------------------------

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZURE_OK = ["2023-11-16 18:15:46.6805900,374,44\n", "2023-11-16 18:15:50.9951690,396,109\n"]


def write(tmp_path, name, text):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def assert_format_error(load, path, line, field=None):
    with pytest.raises(TraceFormatError) as info:
        load(path)
    message = str(info.value)
    assert path.name in message and f":{line}:" in message, message
    if field is not None:
        assert f"field '{field}'" in message, message
    assert isinstance(info.value, ValueError)
    return message


def test_azure_bad_int(tmp_path):
    path = write(tmp_path, "azure_llm_2023_conv.csv.gz", AZURE_HEADER + "".join(AZURE_OK)
                 + "2023-11-16 18:15:51.2224670,879,x\n")
    message = assert_format_error(load_azure_trace, path, 4, "GeneratedTokens")
    assert "expected a non-negative integer, got 'x'" in message


@pytest.mark.parametrize("value", ["-3", "1.5", " 7", ""])
def test_azure_rejects_non_integers(tmp_path, value):
    path = write(tmp_path, "a.csv", AZURE_HEADER + f"2023-11-16 18:15:46.6805900,{value},44\n")
    assert_format_error(load_azure_trace, path, 2, "ContextTokens")


def test_azure_missing_column(tmp_path):
    path = write(tmp_path, "a.csv.gz", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,374\n")
    assert_format_error(load_azure_trace, path, 1, "GeneratedTokens")


def test_azure_short_row(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + AZURE_OK[0] + "2023-11-16 18:15:50.9951690,396\n")
    assert_format_error(load_azure_trace, path, 3, "GeneratedTokens")


def test_azure_unsorted_time(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + AZURE_OK[1] + AZURE_OK[0])
    message = assert_format_error(load_azure_trace, path, 3, "TIMESTAMP")
    assert "sorted" in message


@pytest.mark.parametrize("stamp", ["2023-11-16T18:15:46.68", "2023-13-16 18:15:46.6805900",
                                   "2023-11-16 24:00:00.0", "yesterday"])
def test_azure_bad_timestamp(tmp_path, stamp):
    path = write(tmp_path, "a.csv", AZURE_HEADER + f"{stamp},374,44\n")
    assert_format_error(load_azure_trace, path, 2, "TIMESTAMP")


def test_azure_zero_token_rows_are_skipped_and_reported(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + AZURE_OK[0] + "2023-11-16 18:15:47.0,0,10\n"
                 + "2023-11-16 18:15:48.0,10,0\n" + AZURE_OK[1])
    with pytest.warns(TraceRowsSkippedWarning, match="skipped 2 of 4"):
        trace = load_azure_trace(path)
    assert len(trace) == 2 and trace.report.rows_read == 4 and trace.report.num_skipped == 2
    assert [(r.line, r.field) for r in trace.report.skipped] == [(3, "ContextTokens"), (4, "GeneratedTokens")]
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 4.314579])
    w = TraceWorkload("tmp-azure", "", path, "azure")
    assert w.num_requests == 2 and w.load_report.num_skipped == 2


def test_fractional_seconds_of_any_precision(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + "2023-11-16 23:59:59.5,1,1\n2023-11-17 00:00:01,1,1\n")
    assert load_azure_trace(path).arrival_s.tolist() == pytest.approx([0.0, 1.5])


MOONCAKE_OK = ('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n'
               '{"timestamp": 10, "input_length": 512, "output_length": 7, "hash_ids": [0]}\n')


def test_mooncake_small_file(tmp_path):
    path = write(tmp_path, "m.jsonl", MOONCAKE_OK)
    trace = load_mooncake_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 0.01] and trace.hash_ids == ((0, 1), (0,))


def test_mooncake_bad_json_line(tmp_path):
    path = write(tmp_path, "m.jsonl.gz", MOONCAKE_OK + '{"timestamp": 20, "input_length": \n')
    message = assert_format_error(load_mooncake_trace, path, 3)
    assert "JSON" in message


def test_mooncake_not_an_object(tmp_path):
    path = write(tmp_path, "m.jsonl", MOONCAKE_OK + "[1, 2]\n")
    assert "JSON object" in assert_format_error(load_mooncake_trace, path, 3)


def test_mooncake_missing_key(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 600, "hash_ids": [0, 1]}\n')
    assert_format_error(load_mooncake_trace, path, 1, "output_length")


def test_mooncake_hash_ids_too_few(tmp_path):
    path = write(tmp_path, "m.jsonl", MOONCAKE_OK + '{"timestamp": 20, "input_length": 1100, '
                 '"output_length": 5, "hash_ids": [0, 1]}\n')
    message = assert_format_error(load_mooncake_trace, path, 3, "hash_ids")
    assert "1100" in message


def test_mooncake_hash_ids_too_many(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 5, '
                 '"hash_ids": [0, 1]}\n')
    assert_format_error(load_mooncake_trace, path, 1, "hash_ids")


@pytest.mark.parametrize("field, value", [("input_length", '"600"'), ("output_length", "-1"),
                                          ("output_length", "true"), ("timestamp", '"0"'),
                                          ("hash_ids", '[0, "a"]')])
def test_mooncake_wrong_types(tmp_path, field, value):
    record = {"timestamp": "20", "input_length": "600", "output_length": "5", "hash_ids": "[0, 1]"}
    record[field] = value
    line = "{" + ", ".join(f'"{k}": {v}' for k, v in record.items()) + "}\n"
    path = write(tmp_path, "m.jsonl", MOONCAKE_OK + line)
    assert_format_error(load_mooncake_trace, path, 3, field)


def test_mooncake_unsorted(tmp_path):
    path = write(tmp_path, "m.jsonl", MOONCAKE_OK + '{"timestamp": 5, "input_length": 512, '
                 '"output_length": 7, "hash_ids": [0]}\n')
    assert "sorted" in assert_format_error(load_mooncake_trace, path, 3, "timestamp")


ARENA_HEADER = "req_id,arrival_time_s,client_id,prompt_tokens,output_tokens\n"


def test_arena_bad_values(tmp_path):
    for row, field in [("0,nan,1,2,3", "arrival_time_s"), ("0,1.0,-1,2,3", "client_id"),
                       ("x,1.0,1,2,3", "req_id"), ("0,1.0,1,2,3.5", "output_tokens")]:
        path = write(tmp_path, "arena.csv", ARENA_HEADER + "0,0.5,1,2,3\n" + row + "\n")
        assert_format_error(load_arena_trace, path, 3, field)


def test_arena_unsorted_and_missing_column(tmp_path):
    path = write(tmp_path, "arena.csv", ARENA_HEADER + "0,2.0,1,2,3\n1,1.0,1,2,3\n")
    assert_format_error(load_arena_trace, path, 3, "arrival_time_s")
    path = write(tmp_path, "arena2.csv", "req_id,arrival_time_s,prompt_tokens,output_tokens\n0,0,2,3\n")
    assert_format_error(load_arena_trace, path, 1, "client_id")


def test_empty_file_and_missing_file(tmp_path):
    assert_format_error(load_arena_trace, write(tmp_path, "empty.csv", ""), 1)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_arena_trace(tmp_path / "nope.csv")


def test_edited_file_is_parsed_again(tmp_path):
    path = write(tmp_path, "arena.csv", ARENA_HEADER + "0,0.5,1,2,3\n")
    assert len(load_arena_trace(path)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path.write_text(ARENA_HEADER + "0,0.5,1,2,3\n1,0.7,2,2,3\n")
        assert len(load_arena_trace(path)) == 2
