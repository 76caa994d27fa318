from inference.passages import split_passages, split_sentences


def sentence(i: int, words: int = 12) -> str:
    return " ".join(f"w{i}x{j}" for j in range(words - 1)).capitalize() + f" end{i}."


def test_short_text_is_one_passage_with_whitespace_normalised():
    assert split_passages("  A short   abstract.\n Two lines. ") == ["A short abstract. Two lines."]


def test_empty_text_gives_no_passage():
    assert split_passages("   ") == []


def test_long_text_splits_at_sentence_boundaries_within_limits():
    text = " ".join(sentence(i) for i in range(60))  # 720 words
    passages = split_passages(text, min_words=100, max_words=250)
    assert len(passages) == 3
    for passage in passages:
        assert 100 <= len(passage.split()) <= 250
        assert passage.endswith(".")
    assert " ".join(passages) == text  # nothing lost, nothing repeated


def test_passages_are_balanced_not_a_short_tail():
    text = " ".join(sentence(i) for i in range(22))  # 264 words: two passages of ~132
    sizes = [len(p.split()) for p in split_passages(text, 100, 250)]
    assert len(sizes) == 2 and min(sizes) >= 100


def test_a_sentence_longer_than_the_limit_is_cut_between_words():
    text = " ".join(f"w{i}" for i in range(600))
    passages = split_passages(text, 100, 250)
    assert all(len(p.split()) <= 250 for p in passages)
    assert " ".join(passages) == text


def test_abbreviations_and_initials_do_not_end_sentences():
    text = "Samples, e.g. Ice cores, were taken. J. Smith et al. Reported it. New sentence here."
    assert split_sentences(text) == [
        "Samples, e.g. Ice cores, were taken.",
        "J. Smith et al. Reported it.",
        "New sentence here.",
    ]
