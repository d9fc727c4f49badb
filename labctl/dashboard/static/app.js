// labctl dashboard: polls the server's newest snapshot (api/snapshot, taken by ONE shared collector thread) and
// renders the overview or one cluster's page. No framework, no build step, nothing from outside this origin.
// Text goes in with textContent only: node names, details and URLs come from the lab, never parsed as HTML.
"use strict";
(() => {
  const POLL_MS = 1000; // reading the cached snapshot is cheap; the probing cadence is the collector's
  const base = new URL(document.baseURI);
  const main = document.getElementById("main");
  let latest = null;    // the newest api/snapshot answer
  let fetchedAt = 0;    // performance.now() when it arrived
  let shownSeq = -1;    // the snapshot on screen
  let lost = null;      // why the last poll failed

  function route() {
    const rel = location.pathname.slice(base.pathname.length);
    const m = /^cluster\/([^/]+)$/.exec(rel);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  const mark = (p) => (p.skipped ? "–" : p.ok ? "✓" : "✗");
  const state = (p) => (p.skipped ? "skip" : p.ok ? "ok" : "bad");

  function probe(p, withDetail) {
    return el("td", {class: state(p), title: p.detail}, withDetail ? `${mark(p)} ${p.detail}` : mark(p));
  }

  function gib(mib) {
    const g = mib / 1024;
    return Number.isInteger(g) ? `${g} GiB` : `${g.toFixed(1)} GiB`;
  }

  function nodesTable(c, full) {
    const head = ["node", "role", "VM", "CPU", "memory", "disk", "address", "SSH", "Kubernetes", "version"];
    const rows = c.nodes.map((n) => el("tr", {"data-node": n.name, "data-ready": String(n.ready.ok)},
      el("td", {}, n.name), el("td", {}, n.role), el("td", {class: n.vm === "running" ? "ok" : "bad"}, n.vm),
      el("td", {}, n.cpu ?? "-"), el("td", {}, n.memory ? gib(n.memory) : "-"), el("td", {}, n.disk ? `${n.disk} GB` : "-"),
      el("td", {}, n.address || "-"), probe(n.ssh, full), probe(n.ready, true), el("td", {}, n.version || "-")));
    return el("table", {class: "nodes"}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows));
  }

  function probes(c) {
    const items = [["API", c.api], ["Cilium", c.cilium], ["CoreDNS", c.dns]]
      .map(([name, p]) => el("li", {class: state(p)}, `${mark(p)} ${name}: ${p.detail}`));
    return el("ul", {class: "probes"}, ...items);
  }

  function stacks(c) {
    const names = Object.keys(c.stacks);
    if (!names.length) return el("p", {class: "muted"}, "no stacks declared");
    return el("ul", {class: "stacks"}, ...names.map((name) => {
      const p = c.stacks[name];
      return el("li", {class: state(p), "data-stack": name}, `${mark(p)} ${name}: ${p.detail}`);
    }));
  }

  function urls(c) {
    const names = Object.keys(c.urls);
    if (!names.length) return el("p", {class: "muted"}, "no URLs yet");
    return el("ul", {class: "urls"}, ...names.map((name) => {
      const url = c.urls[name];
      // only web links are links (a URL is lab data); the lab's services open in a new tab, without a Referer
      const link = /^https?:\/\//.test(url) ? el("a", {href: url, target: "_blank", rel: "noreferrer noopener"}, url) : url;
      return el("li", {}, `${name}: `, link);
    }));
  }

  function lines(items, empty) {
    if (!items || !items.length) return el("p", {class: "muted"}, empty);
    return el("ul", {class: "lines"}, ...items.map((line) => el("li", {}, line)));
  }

  function clusterCard(c, full) {
    const ready = c.nodes.filter((n) => n.ready.ok).length;
    const title = full ? el("span", {}, c.name) : el("a", {href: `cluster/${encodeURIComponent(c.name)}`}, c.name);
    const card = el("section", {class: "cluster", "data-cluster": c.name, "data-healthy": String(c.healthy)},
      el("h2", {}, title, " ", el("span", {class: `badge ${c.healthy ? "ok" : "bad"}`}, c.healthy ? "healthy" : "not healthy"),
        " ", el("span", {class: "muted"}, `${ready}/${c.nodes.length} nodes Ready`)),
      nodesTable(c, full), probes(c));
    if (full) {
      card.append(el("h3", {}, "stacks"), stacks(c), el("h3", {}, "URLs"), urls(c),
        el("h3", {}, "pods not ready"), lines(c.pods_not_ready, "none"),
        el("h3", {}, "recent warning events"), lines(c.events, "none"));
      if (c.kubeconfig) card.append(el("p", {class: "muted"}, `kubeconfig: ${c.kubeconfig} (context labctl-${c.name})`));
    } else {
      card.append(el("div", {class: "columns"}, el("div", {}, el("h3", {}, "stacks"), stacks(c)),
        el("div", {}, el("h3", {}, "URLs"), urls(c))));
      if (c.pods_not_ready && c.pods_not_ready.length) {
        card.append(el("h3", {}, `pods not ready (${c.pods_not_ready.length})`), lines(c.pods_not_ready, ""));
      }
      if (c.events && c.events.length) {
        card.append(el("h3", {}, "recent warning events"), lines(c.events.slice(-3), ""));
      }
    }
    return card;
  }

  function render() {
    const snap = latest && latest.snapshot;
    if (!snap) return;
    const health = document.getElementById("health");
    health.textContent = snap.healthy ? "healthy" : "not healthy";
    health.className = `badge ${snap.healthy ? "ok" : "bad"}`;
    const wanted = route();
    let cards;
    if (wanted === null) {
      cards = snap.clusters.map((c) => clusterCard(c, false));
    } else {
      const c = snap.clusters.find((x) => x.name === wanted);
      cards = [c ? clusterCard(c, true) : el("p", {class: "error"}, `no cluster ${wanted} in this lab`)];
      document.title = `${wanted} · ${document.title.split(" · ").pop()}`;
    }
    main.replaceChildren(...cards);
    main.dataset.seq = String(latest.seq);
    main.dataset.taken = String(latest.taken);  // when the probe on screen started (epoch s): for tests and tools
    shownSeq = latest.seq;
  }

  function tick() {
    const age = document.getElementById("age");
    const error = document.getElementById("error");
    if (latest && latest.age !== null) {
      const seconds = latest.age + (performance.now() - fetchedAt) / 1000;
      let text = `updated ${Math.round(seconds)} s ago (every ${latest.interval} s)`;
      if (latest.probing !== null && latest.probing > latest.interval) text += `, probing for ${Math.round(latest.probing)} s`;
      age.textContent = text;
      age.className = seconds > 3 * latest.interval + 30 ? "stale" : "muted";
    }
    const problem = lost || (latest && latest.error && `the last probe failed: ${latest.error}`);
    error.hidden = !problem;
    error.textContent = problem || "";
  }

  async function poll() {
    try {
      const answer = await fetch("api/snapshot", {cache: "no-store"});
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      latest = await answer.json();
      fetchedAt = performance.now();
      lost = null;
      if (latest.seq !== shownSeq) render();
    } catch (err) {
      lost = `cannot reach labctl dashboard (stopped?): ${err.message}`;
    } finally {
      tick();
      setTimeout(poll, POLL_MS);
    }
  }

  setInterval(tick, 1000);
  poll();
})();
