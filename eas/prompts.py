"""Prompt texts for multiple-choice scoring and for the contrasts vectors are built from.

Every scoring prompt ends with ``Answer:`` so the next token is the answer
letter; ``eas.core.score`` reads it (both spellings "A" and " A", or the bare "A"
with ``prompt.letters=bare``).

Formats (``prompt.format``):

- ``chat``: the tokenizer's chat template around ``Q\\n\\nA. opt\\n...\\n\\n<instruction>``,
  then ``Answer:``; plain text where the model has no template.
- ``plain``: the same text without a template.
- ``pas_reference``: the PAS reference's texts, never templated:
  ``Q\\nA: opt\\n...[\\nRemember, <fact>.]\\n<instruction>\\nAnswer:``; a context is written
  ``Context: <context>\\nQuestion: <question>``; the iPAS texts are ``Q <option>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from eas.data.schema import MCItem

ANSWER = "Answer:"  # every scoring prompt ends here; the next token is the letter


@dataclass(frozen=True)
class Prompter:
    """Formats items as plain text, through the tokenizer's chat template, or as the PAS
    reference writes them.

    Attributes:
        tokenizer: the model's tokenizer (its chat template is used when ``format="chat"``).
        format: ``chat``, ``plain`` or ``pas_reference``; ``chat`` falls back to ``plain`` if
            there is no template.
        system: optional system message (chat only).
        instruction: the line that asks for a letter.
        shots: in-context exemplars shown, each with its correct answer, before every scoring
            prompt (``mc``); empty (the default) leaves every prompt as it was.
    """

    tokenizer: object
    format: str = "chat"
    system: str | None = None
    instruction: str = "Answer with the letter of the correct option."
    shots: tuple[MCItem, ...] = ()

    @property
    def uses_chat(self) -> bool:
        return self.format == "chat" and bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def add_special_tokens(self) -> bool:
        # a chat template writes its own special tokens; plain text gets the tokenizer's BOS
        return not self.uses_chat

    @property
    def reference(self) -> bool:
        return self.format == "pas_reference"

    def _wrap(self, user: str, answer_prefix: str) -> str:
        if not self.uses_chat:
            return f"{user}\n{answer_prefix}"
        messages = [{"role": "user", "content": user}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer_prefix

    def _stem(self, item: MCItem) -> str:
        if not item.context:
            return item.question
        if self.reference:
            return f"Context: {item.context}\nQuestion: {item.question}"
        return f"{item.context}\n{item.question}"

    def generation(self, text: str, system: str | None = None) -> str:
        """A free-form prompt for generation: the chat template's user turn (with ``system``
        as its system message, falling back to ``self.system``) ready for the assistant's
        reply; without a template the text itself, after the system text when there is one."""
        system = system if system is not None else self.system
        if not self.uses_chat:
            return f"{system}\n\n{text}" if system else text
        messages = [{"role": "user", "content": text}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _mc_user(self, item: MCItem) -> str:
        """The user text of a scoring prompt: question, lettered options, instruction."""
        if self.reference:
            lines = [self._stem(item), *(f"{k}: {text}" for k, text in zip(item.letters, item.options))]
            if item.fact:
                lines.append(f"Remember, {item.fact}.")
            return "\n".join([*lines, self.instruction])
        options = "\n".join(f"{letter}. {text}" for letter, text in zip(item.letters, item.options))
        fact = f"\n\nRemember, {item.fact}." if item.fact else ""
        return f"{self._stem(item)}\n\n{options}{fact}\n\n{self.instruction}"

    def mc(self, item: MCItem) -> str:
        """The scoring prompt: question, lettered options, instruction, ending in ``Answer:``;
        after the ``shots``, each answered with its correct letter, when there are any."""
        if not self.shots:
            return self._wrap(self._mc_user(item), ANSWER)
        if not self.uses_chat:
            solved = [f"{self._mc_user(s)}\n{ANSWER} {s.letters[s.label]}" for s in self.shots]
            return "\n\n".join([*solved, self._wrap(self._mc_user(item), ANSWER)])
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for s in self.shots:
            messages += [{"role": "user", "content": self._mc_user(s)},
                         {"role": "assistant", "content": f"{ANSWER} {s.letters[s.label]}"}]
        messages.append({"role": "user", "content": self._mc_user(item)})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER

    def mc_with_letter(self, item: MCItem, option: int) -> str:
        """The scoring prompt followed by one answer letter (CAA's A/B contrast)."""
        return f"{self.mc(item)} {item.letters[option]}"

    def with_response(self, item: MCItem, option: int) -> str:
        """The question as the user turn and one option's text as the assistant's reply, with no
        option list and no ``Answer:`` (a free-text contrast pair, ``method=response_diff``).

        ``chat``: the template's user turn and generation prompt, then the response; otherwise
        ``question\\nresponse``, or the response alone where the question is empty.
        """
        response, stem = item.options[option], self._stem(item)
        if self.uses_chat:
            return f"{self._wrap(stem, '')}{response}"
        return f"{stem}\n{response}" if stem else response

    def with_option_text(self, item: MCItem, option: int) -> str:
        """The question (no option list) followed by one option's text (the iPAS contrast)."""
        if self.reference:
            return f"{self._stem(item)} {item.options[option]}"
        return f"{self._wrap(self._stem(item), 'Answer:')} {item.options[option]}"
