"""One-line error reports."""

from model.errors import first_line


def test_first_line_keeps_the_first_line_of_a_long_message():
    assert first_line(RuntimeError("Error in faiss::read_index\n  at line 3\n")) == (
        "Error in faiss::read_index"
    )


def test_first_line_names_the_type_when_there_is_no_message():
    assert first_line(KeyError()) == "KeyError" and first_line(ValueError("  \n ")) == "ValueError"
