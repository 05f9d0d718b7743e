// The alerts: a banner while any alert fires, and a panel listing every configured alert with
// its state, its terms' last values and since when, from GET /api/livetap/alerts (polled; the
// states change at most once per evaluation interval).

import { el, fmtNum } from "./util.js";
import { ApiError } from "./api.js";

/** How often the list is fetched. */
const POLL_MS = 2000;

export class AlertsPanel {
  constructor({ panel, list, status, banner, bannerText }) {
    this.panel = panel;
    this.list = list;
    this.status = status;
    this.banner = banner;
    this.bannerText = bannerText;
    this.timer = null;
    this.api = null;
  }

  start(api) {
    this.stop();
    this.api = api;
    this.poll();
    this.timer = setInterval(() => this.poll(), POLL_MS);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.api = null;
    this.banner.hidden = true;
  }

  async poll() {
    const api = this.api;
    if (!api) return;
    let body;
    try {
      body = await api.get("api/livetap/alerts");
    } catch (e) {
      // A principal without metrics-live cannot see the alerts: say so once, in the panel.
      this.panel.hidden = false;
      this.status.textContent =
        e instanceof ApiError && e.status === 403
          ? "This principal lacks the `metrics-live` permission the alerts need."
          : `Alerts unavailable: ${e.message}`;
      return;
    }
    if (api !== this.api) return;
    this.render(body);
  }

  render(body) {
    const alerts = body.alerts || [];
    // No alerts configured: nothing to show.
    this.panel.hidden = alerts.length === 0;
    this.status.textContent = "";
    this.list.replaceChildren();
    for (const a of alerts) {
      const item = el("li", "alert-item");
      item.dataset.state = a.state;
      item.dataset.name = a.name;
      const head = el("div", "alert-head");
      head.append(el("span", `alert-state ${a.state}`, a.state), el("strong", null, a.name));
      const since = el("div", "alert-since", `since ${a.since}${a.last_notified ? `, notified ${a.last_notified}` : ""}`);
      const cond = el("code", "alert-condition", a.condition);
      const values = el(
        "div",
        "alert-values",
        (a.values || []).map((v) => `${v.term} = ${v.value === null ? "no data" : fmtNum(v.value)}`).join("; "),
      );
      item.append(head, cond, values, since);
      this.list.append(item);
    }
    const firing = alerts.filter((a) => a.state === "firing").map((a) => a.name);
    this.banner.hidden = firing.length === 0;
    this.banner.dataset.firing = firing.join(",");
    this.bannerText.textContent =
      firing.length === 1 ? `Alert firing: ${firing[0]}` : `${firing.length} alerts firing: ${firing.join(", ")}`;
  }
}
