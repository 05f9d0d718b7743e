// The filter bar. What the user types is the query language's expression form (`q=`), so
// `remote-ip=10.0.0.5 domain=*.example.org error` means the three terms ANDed, and `OR`,
// `NOT` and parentheses work as the README describes. While typing, the server's own parser
// checks the text (`/api/livetap/query-check`) and its message is shown under the input with
// a mark where the mistake is. The applied filter is kept in the page URL (`?q=…`), so a view
// can be shared; nothing else goes there.

import { el, charIndexOfByte, debounce } from "./util.js";
import { ApiError } from "./api.js";

export class FilterBar {
  constructor({ form, input, follow, status, onApply }) {
    this.form = form;
    this.input = input;
    this.follow = follow;
    this.status = status;
    this.onApply = onApply;
    this.api = null;
    this.checks = 0;
    this.applies = 0;
    this.applied = null;
    const url = new URLSearchParams(location.search);
    input.value = url.get("q") || "";
    follow.checked = url.get("follow") !== "false";
    const later = debounce(() => this.check(), 250);
    input.addEventListener("input", () => {
      this.setState("typing");
      later();
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.apply();
    });
    follow.addEventListener("change", () => this.apply());
  }

  /** The stream's query parameters for the current text. */
  params() {
    const p = new URLSearchParams();
    const text = this.input.value.trim();
    if (text) p.set("q", text);
    if (!this.follow.checked) p.set("follow", "false");
    return p;
  }

  setState(state) {
    this.form.dataset.state = state;
    this.input.setAttribute("aria-invalid", state === "error" ? "true" : "false");
  }

  /**
   * Asks the server whether `params` (the current text's by default) parse; shows its answer
   * unless a later check started meanwhile. True when they parse, whether shown or not: an
   * Enter applies the text it was pressed on even if the check typing started afterwards
   * (250 ms later) overtakes it on a slow server.
   */
  async check(params = this.params()) {
    const n = ++this.checks;
    const text = this.input.value;
    const p = new URLSearchParams(params);
    p.delete("follow");
    try {
      const answer = await this.api.get(`api/livetap/query-check?${p}`);
      if (n === this.checks) this.showOk(answer.query);
      return true;
    } catch (e) {
      if (n !== this.checks) return false;
      if (e instanceof ApiError && e.status === 400) this.showError(text, e.body);
      else this.showMessage("error", `cannot check the filter: ${e.message}`);
      return false;
    }
  }

  showOk(canonical) {
    this.setState("ok");
    this.status.replaceChildren();
    if (canonical) {
      this.status.append(el("span", "ok-mark", "✓ "), el("span", null, "matches "), el("code", null, canonical));
    } else {
      this.status.append(el("span", "ok-mark", "✓ "), el("span", null, "no filter: every event"));
    }
  }

  /** The parser's message, and the text with a mark under the byte it points at. */
  showError(text, body) {
    this.setState("error");
    this.status.replaceChildren();
    this.status.append(el("div", "error-text", body.detail || body.error || "invalid filter"));
    // Only a position in the typed text (`q`) can be shown in it.
    if (body.parameter === "q" && typeof body.position === "number") {
      const at = charIndexOfByte(text, body.position);
      const pre = el("pre", "error-at");
      pre.append(
        document.createTextNode(text.slice(0, at)),
        el("mark", null, text.slice(at, at + 1) || " "),
        document.createTextNode(text.slice(at + 1)),
      );
      this.status.append(pre);
    }
  }

  showMessage(state, text) {
    this.setState(state);
    this.status.replaceChildren(el("div", state === "error" ? "error-text" : null, text));
  }

  /**
   * Checks the text as it is now, then (when valid) remembers it in the URL and restarts the
   * stream with it. Of two applies in flight (a checkbox change, then Enter), the later one
   * wins: an earlier one whose check answers last does nothing.
   */
  async apply(after = null) {
    const p = this.params();
    const text = this.input.value;
    const n = ++this.applies;
    if (!(await this.check(p))) return false;
    if (n !== this.applies) return false;
    const url = p.toString() ? `?${p}` : location.pathname;
    history.replaceState(null, "", url);
    this.applied = text;
    this.onApply(p, after);
    return true;
  }

  /** Sets the text (for "follow this session") and applies it. */
  set(text, after = null) {
    this.input.value = text;
    return this.apply(after);
  }
}
