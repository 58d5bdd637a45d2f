// Suggestions as you type: the ARIA 1.2 combobox pattern with a list popup
// (https://www.w3.org/WAI/ARIA/apg/patterns/combobox/). The input keeps focus; the
// active option is named by aria-activedescendant. Answers of GET /v1/suggest that are
// stale (the text changed, focus left) are dropped; errors show no suggestions.
import { api, count, el } from "./dom.js";

const SUGGEST_SIZE = 8;
const SUGGEST_DELAY_MS = 120;
const KIND_LABEL = { brand: "Brand", category: "Category", phrase: "", query: "" };

/**
 * Wire the combobox ``input`` to its ``listbox``; ``status`` is a polite live region that
 * announces how many suggestions there are; ``onPick(suggestion)`` runs on Enter or a click
 * on one. Returns ``close()`` and ``active()`` (the active suggestion or null: the form's
 * submit handler asks it, since Enter submits the form).
 */
export function combobox({ input, listbox, status, onPick }) {
  let suggestTimer = 0;
  let suggestAbort = null;
  let suggestions = [];
  let activeIndex = -1;

  function activeOption() {
    return activeIndex >= 0 && !listbox.hidden ? suggestions[activeIndex] : null;
  }

  function closeSuggestions() {
    clearTimeout(suggestTimer);
    if (suggestAbort) suggestAbort.abort();
    suggestAbort = null;
    listbox.hidden = true;
    listbox.replaceChildren();
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
    suggestions = [];
    activeIndex = -1;
  }

  function setActive(index) {
    const options = listbox.querySelectorAll("[role=option]");
    activeIndex = index;
    options.forEach((option, i) => option.setAttribute("aria-selected", String(i === index)));
    if (index >= 0) {
      input.setAttribute("aria-activedescendant", options[index].id);
      options[index].scrollIntoView({ block: "nearest" });
    } else {
      input.removeAttribute("aria-activedescendant");
    }
  }

  /** The suggestion with what the shopper has not typed yet in bold (text nodes only). */
  function suggestionText(text, typed) {
    const node = el("span", { class: "suggestion-text" });
    const prefix = typed.trim().toLowerCase();
    if (prefix && text.toLowerCase().startsWith(prefix) && text.length > prefix.length) {
      node.append(text.slice(0, prefix.length), el("strong", { text: text.slice(prefix.length) }));
    } else {
      node.textContent = text;
    }
    return node;
  }

  function showSuggestions(items, typed) {
    suggestions = items;
    activeIndex = -1;
    if (!items.length) {
      listbox.hidden = true;
      listbox.replaceChildren();
      input.setAttribute("aria-expanded", "false");
      input.removeAttribute("aria-activedescendant");
      return;
    }
    listbox.replaceChildren(
      ...items.map((item, i) =>
        el("li", {
          id: `suggestion-${i}`,
          role: "option",
          class: "suggestion",
          "aria-selected": "false",
          "data-kind": item.kind,
          // mousedown, not click: the input keeps focus, so the list is not closed first.
          onmousedown: (event) => {
            event.preventDefault();
            pickSuggestion(item);
          },
          onmousemove: () => {
            if (activeIndex !== i) setActive(i);
          },
        },
        suggestionText(item.text, typed),
        KIND_LABEL[item.kind] ? el("span", { class: "suggestion-kind", text: KIND_LABEL[item.kind] }) : null,
        typeof item.products === "number" ? el("span", { class: "suggestion-count", text: `${count.format(item.products)}` }) : null),
      ),
    );
    listbox.hidden = false;
    input.setAttribute("aria-expanded", "true");
    status.textContent = `${items.length} suggestion${items.length === 1 ? "" : "s"}; use the arrow keys to choose.`;
  }

  function pickSuggestion(item) {
    closeSuggestions();
    onPick(item);
  }

  async function fetchSuggestions(q) {
    if (suggestAbort) suggestAbort.abort();
    const controller = new AbortController();
    suggestAbort = controller;
    try {
      const answer = await api(`/v1/suggest?q=${encodeURIComponent(q)}&size=${SUGGEST_SIZE}`, { signal: controller.signal });
      // A stale answer (the text changed since, or focus left) is dropped.
      if (controller.signal.aborted || suggestInput() !== q || document.activeElement !== input) return;
      showSuggestions(Array.isArray(answer.suggestions) ? answer.suggestions : [], q);
    } catch {
      // Suggestions are a convenience: no endpoint, a 503 or a network error shows none.
      if (!controller.signal.aborted) showSuggestions([], q);
    }
  }

  /** What the suggester is asked: the box's text without leading blanks, a trailing
   * space kept (it tells the suggester the last word is finished). */
  function suggestInput() {
    return input.value.replace(/^\s+/, "").slice(0, 100);
  }

  input.addEventListener("input", () => {
    clearTimeout(suggestTimer);
    const q = suggestInput();
    if (!q.trim()) {
      closeSuggestions();
      return;
    }
    suggestTimer = setTimeout(() => fetchSuggestions(q), SUGGEST_DELAY_MS);
  });

  input.addEventListener("keydown", (event) => {
    const open = !listbox.hidden && suggestions.length > 0;
    switch (event.key) {
      case "ArrowDown":
        if (!open) {
          if (suggestInput().trim()) fetchSuggestions(suggestInput());
          return;
        }
        event.preventDefault();
        setActive(activeIndex + 1 >= suggestions.length ? 0 : activeIndex + 1);
        break;
      case "ArrowUp":
        if (!open) return;
        event.preventDefault();
        setActive(activeIndex <= 0 ? suggestions.length - 1 : activeIndex - 1);
        break;
      case "Escape":
        if (open) {
          event.preventDefault();
          closeSuggestions();
        } else if (input.value) {
          event.preventDefault();
          input.value = "";
        }
        break;
      case "Tab":
        closeSuggestions();
        break;
      default:
        break;
    }
    // Enter submits the form, which picks the active suggestion if there is one.
  });

  input.addEventListener("blur", () => {
    // After a click elsewhere; a click on an option never blurs (mousedown is prevented).
    closeSuggestions();
  });

  return { close: closeSuggestions, active: activeOption };
}
