from loralab.core.prompts import Prompt, parse_prompts


def test_prompts_parse_one_per_line_with_optional_category():
    text = "standard: a photo of a cat\n\n# a comment\nchallenging:  a glass of water \na red car"
    assert parse_prompts(text) == [
        Prompt("a photo of a cat", "standard"),
        Prompt("a glass of water", "challenging"),
        Prompt("a red car", "default"),
    ]


def test_only_a_single_leading_word_is_read_as_category():
    assert parse_prompts("a cat: sitting") == [Prompt("a cat: sitting")]
    assert parse_prompts("Closeup: a face") == [Prompt("a face", "closeup")]
