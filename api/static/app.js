// The shopsearch search page: plain JavaScript over the JSON API, no build step.
//
// State lives in the URL (?q=drill&brand=DeWalt&page=2, ?product=SKU-1): a reload, a
// shared link and the Back button all show the same thing. API text is only ever
// written with textContent (never innerHTML): product data is the shop's input.
import { api, count, el, formatPrice, parsePriceLabel, priceLabelText, productImage, stockBadge } from "./dom.js";
import { renderFacets } from "./facets.js";
import { combobox } from "./suggest.js";

const PAGE_SIZE = 12;
const MAX_WINDOW = 1000; // the API's deepest hit (schemas.MAX_RESULT_WINDOW)
const FACETS = ["brand", "category", "price", "in_stock"];
const RECS_SIZE = 6;

const $ = (id) => document.getElementById(id);
const input = $("q");

// -- state <-> URL ----------------------------------------------------------------

function readState() {
  const p = new URLSearchParams(location.search);
  const page = Number.parseInt(p.get("page") || "1", 10);
  return {
    q: (p.get("q") || "").slice(0, 512),
    page: Number.isFinite(page) && page >= 1 ? page : 1,
    brands: p.getAll("brand"),
    category: p.get("category") || "",
    price: parsePriceLabel(p.get("price")) ? p.get("price") : "",
    inStock: p.get("in_stock") === "1",
    raw: p.get("raw") === "1",
    explain: p.get("explain") === "1",
    product: p.get("product") || "",
  };
}

function stateUrl(s) {
  const p = new URLSearchParams();
  if (s.product) p.set("product", s.product);
  if (s.q) p.set("q", s.q);
  for (const b of s.brands || []) p.append("brand", b);
  if (s.category) p.set("category", s.category);
  if (s.price) p.set("price", s.price);
  if (s.inStock) p.set("in_stock", "1");
  if (s.raw) p.set("raw", "1");
  if (s.explain) p.set("explain", "1");
  if (s.page > 1) p.set("page", String(s.page));
  const qs = p.toString();
  return qs ? `/?${qs}` : "/";
}

let state = readState();

/** Go to a new state (a history entry) and render it. */
function navigate(changes, { replace = false } = {}) {
  state = { ...state, ...changes };
  const url = stateUrl(state);
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

window.addEventListener("popstate", () => {
  state = readState();
  render();
});

// -- API --------------------------------------------------------------------------
function filtersOf(s, without) {
  const f = {};
  if (s.brands.length && without !== "brand") f.brand = s.brands;
  if (s.category) f.category = s.category;
  if (s.price && without !== "price") {
    const r = parsePriceLabel(s.price);
    // Facet buckets are [min, max); the filter's max is inclusive. Prices are in cents,
    // so the cent below max keeps a product priced exactly at max out of both buckets.
    f.price = r.max === null ? { min: r.min } : { min: r.min, max: Math.max(r.min, r.max - 0.01) };
  }
  if (s.inStock) f.in_stock = true;
  return Object.keys(f).length ? f : null;
}

function searchBody(s, extra) {
  const body = { q: s.q, page: s.page, size: PAGE_SIZE, facets: FACETS, ...extra };
  const filters = filtersOf(s, extra && extra.without);
  delete body.without;
  if (filters) body.filters = filters;
  if (s.raw) body.rewrite = false;
  if (s.explain) body.explain = true;
  return body;
}

const post = (body, signal) =>
  api("/v1/search", { method: "POST", body: JSON.stringify(body), signal });

// -- search view ------------------------------------------------------------------

let searchAbort = null;

async function runSearch() {
  if (searchAbort) searchAbort.abort();
  const controller = new AbortController();
  searchAbort = controller;
  const s = state;
  const resultsEl = $("results");
  resultsEl.setAttribute("aria-busy", "true");
  $("status").textContent = "Searching…";
  // A selected brand or price range narrows its own facet to itself: its other values
  // come from the same search without that filter (one extra cheap request each).
  const disjunctive = [];
  if (s.brands.length) disjunctive.push("brand");
  if (s.price) disjunctive.push("price");
  try {
    const [answer, ...others] = await Promise.all([
      post(searchBody(s), controller.signal),
      ...disjunctive.map((field) =>
        post(
          { ...searchBody(s, { without: field }), page: 1, size: 1, facets: [field], explain: false },
          controller.signal,
        ),
      ),
    ]);
    if (controller.signal.aborted) return;
    disjunctive.forEach((field, i) => {
      answer.facets[field] = others[i].facets[field];
    });
    showAnswer(s, answer);
  } catch (error) {
    if (error.name === "AbortError") return;
    showSearchError(error);
  } finally {
    if (searchAbort === controller) resultsEl.removeAttribute("aria-busy");
  }
}

function showSearchError(error) {
  $("results").replaceChildren();
  $("pagination").hidden = true;
  const status = $("status");
  status.replaceChildren(
    el("span", { class: "error", text: `Search failed: ${error.message}` }),
    " ",
    el("button", { type: "button", class: "link-button", onclick: () => runSearch(), text: "Try again" }),
  );
}

function showAnswer(s, answer) {
  $("index-version").textContent = answer.index_version ? ` · index ${answer.index_version}` : "";
  const ms = answer.timings_ms && answer.timings_ms.total;
  const noun = answer.total === 1 ? "result" : "results";
  const status = $("status");
  status.replaceChildren(
    el("strong", { text: count.format(answer.total) }),
    ` ${noun} for `,
    el("q", { text: s.q }),
    typeof ms === "number" ? ` in ${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms` : "",
    answer.cached ? " (cached)" : "",
  );
  showRanking(s, answer);
  showRewrite(s, answer.rewrite);
  showActiveFilters(s);
  renderFacets($("facets"), s, answer.facets || {}, navigate);
  showHits(s, answer);
  showPagination(s, answer.total);
}

function showRanking(s, answer) {
  const line = $("ranking");
  line.hidden = !s.explain;
  if (!s.explain) return;
  const parts = [`mode ${answer.mode}`];
  if (answer.fusion) parts.push(`fusion ${answer.fusion}`);
  parts.push(`rerank ${answer.rerank}`);
  parts.push(`personalized ${answer.personalized || "off"}`);
  if (answer.degraded && answer.degraded.length) parts.push(`degraded: ${answer.degraded.join(", ")}`);
  if (answer.cut && answer.cut.length) parts.push(`cut: ${answer.cut.join(", ")}`);
  const stages = Object.entries(answer.timings_ms || {})
    .filter(([k]) => k !== "total")
    .map(([k, v]) => `${k} ${Number(v).toFixed(1)}`)
    .join(" · ");
  if (typeof answer.rules_version === "number") parts.push(`rules v${answer.rules_version}`);
  // The merchandising rules that matched this query and what each did.
  const rules = merchNotes(answer.merch);
  line.replaceChildren(
    el("span", { class: "ranking-label", text: "Ranking: " }),
    parts.join(" · "),
    stages ? el("span", { class: "ranking-stages", text: ` — ms: ${stages}` }) : "",
    rules.length
      ? el("ul", { class: "merch-rules", "aria-label": "Merchandising rules" }, ...rules.map((note) => el("li", { text: note })))
      : null,
  );
}

function showRewrite(s, rewrite) {
  const notice = $("rewrite-notice");
  if (!rewrite || s.raw) {
    notice.hidden = true;
    notice.replaceChildren();
    return;
  }
  notice.replaceChildren(
    "Showing results for ",
    el("strong", { class: "searched", text: rewrite.searched_q }),
    " (searched instead of ",
    el("em", { class: "typed", text: s.q }),
    "). ",
    el("a", {
      href: stateUrl({ ...s, raw: true, page: 1 }),
      class: "search-as-typed",
      onclick: (event) => {
        event.preventDefault();
        navigate({ raw: true, page: 1 });
      },
      text: `Search for “${s.q}” as typed`,
    }),
  );
  notice.hidden = false;
}

function showActiveFilters(s) {
  const chips = [];
  const remove = (label, changes) =>
    el(
      "li",
      {},
      el("button", {
        type: "button",
        class: "chip",
        "aria-label": `Remove filter ${label}`,
        onclick: () => navigate({ ...changes, page: 1 }),
      }, label, el("span", { "aria-hidden": "true", class: "chip-x", text: "×" })),
    );
  for (const b of s.brands) chips.push(remove(b, { brands: s.brands.filter((x) => x !== b) }));
  if (s.category) chips.push(remove(s.category.split(" > ").pop(), { category: "" }));
  if (s.price) chips.push(remove(priceLabelText(s.price), { price: "" }));
  if (s.inStock) chips.push(remove("In stock", { inStock: false }));
  if (chips.length > 1) {
    chips.push(
      el("li", {}, el("button", {
        type: "button",
        class: "link-button",
        onclick: () => navigate({ brands: [], category: "", price: "", inStock: false, page: 1 }),
        text: "Clear all",
      })),
    );
  }
  const list = $("active-filters");
  list.replaceChildren(...chips);
  list.hidden = chips.length === 0;
  const active = s.brands.length + (s.category ? 1 : 0) + (s.price ? 1 : 0) + (s.inStock ? 1 : 0);
  $("filters-count").textContent = String(active);
  $("filters-count").hidden = active === 0;
}

// -- hits -------------------------------------------------------------------------

function productLink(item, text, className) {
  return el("a", {
    href: stateUrl({ ...state, product: item.id, page: state.page }),
    class: className,
    "data-product": item.id,
    onclick: (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      navigate({ product: item.id });
    },
    text,
  });
}

function showHits(s, answer) {
  const list = $("results");
  if (!answer.hits.length) {
    list.replaceChildren(
      el("li", { class: "empty" },
        el("p", { class: "empty-title", text: answer.total === 0 ? "No products match." : "No more results on this page." }),
        el("p", { class: "muted", text: "Check the spelling, use fewer words or remove a filter." })),
    );
    return;
  }
  const first = (answer.page - 1) * answer.size;
  list.setAttribute("start", String(first + 1));
  list.replaceChildren(...answer.hits.map((hit, i) => hitCard(hit, first + i + 1)));
}

function hitCard(hit, position) {
  const card = el("li", { class: "card", "data-id": hit.id, "data-brand": hit.brand });
  card.append(productImage(hit));
  const body = el("div", { class: "card-body" });
  if (hit.brand) body.append(el("p", { class: "card-brand", text: hit.brand }));
  body.append(el("h3", { class: "card-title" }, productLink(hit, hit.title, "card-link")));
  if (hit.category) body.append(el("p", { class: "card-category", text: hit.category.split(" > ").join(" › ") }));
  body.append(
    el("div", { class: "card-meta" },
      el("span", { class: "price", text: formatPrice(hit.price) }),
      stockBadge(hit.in_stock)),
  );
  if (hit.explain) body.append(explainPanel(hit, position));
  card.append(body);
  return card;
}

const fmt = (v, digits = 4) => (typeof v === "number" ? v.toFixed(digits) : "—");

/** Why a hit ranks where it does: each leg's rank and score, rerank, personal, merch. */
function explainPanel(hit, position) {
  const e = hit.explain;
  const rows = [
    ["Position", String(position)],
    ["Dense", e.dense_rank ? `#${e.dense_rank} · ${fmt(e.dense_score)}` : "not retrieved"],
    ["Lexical", e.lexical_rank ? `#${e.lexical_rank} · ${fmt(e.lexical_score)}` : "not retrieved"],
    ["Fused", fmt(e.fused_score)],
  ];
  if (e.rerank_score !== undefined && e.rerank_score !== null) rows.push(["Rerank", fmt(e.rerank_score)]);
  if (e.final_score !== undefined && e.final_score !== null) rows.push(["Final", fmt(e.final_score)]);
  if (e.personal_score !== undefined && e.personal_score !== null) rows.push(["Personal", fmt(e.personal_score)]);
  rows.push(["Score", fmt(hit.score)]);
  const dl = el("dl", { class: "explain" });
  for (const [k, v] of rows) dl.append(el("div", {}, el("dt", { text: k }), el("dd", { text: v })));
  const merch = merchNotes(e.merch !== undefined ? e.merch : hit.merch);
  if (merch.length) {
    dl.append(el("div", { class: "merch" }, el("dt", { text: "Merch" }),
      el("dd", {}, el("ul", {}, ...merch.map((note) => el("li", { text: note }))))));
  }
  return el("div", { class: "explain-box", "aria-label": `Ranking details for ${hit.title}`, role: "group" }, dl);
}

/** Merchandising notes in whatever shape the API gives them, as lines of text. */
function merchNotes(merch) {
  if (merch === undefined || merch === null) return [];
  if (typeof merch === "string") return [merch];
  if (Array.isArray(merch)) return merch.flatMap(merchNotes);
  if (typeof merch === "object") {
    return Object.entries(merch).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
  }
  return [String(merch)];
}

// -- pagination -------------------------------------------------------------------

function showPagination(s, total) {
  const nav = $("pagination");
  const last = Math.min(Math.ceil(total / PAGE_SIZE), Math.floor(MAX_WINDOW / PAGE_SIZE));
  if (last <= 1) {
    nav.hidden = true;
    nav.replaceChildren();
    return;
  }
  const go = (page) => () => {
    navigate({ page });
    $("results-heading").focus();
  };
  const items = [];
  items.push(el("li", {}, el("button", {
    type: "button", class: "page-nav", disabled: s.page <= 1, onclick: go(s.page - 1),
  }, el("span", { "aria-hidden": "true", text: "‹ " }), "Previous")));
  // First, last and two either side of the current page; gaps as an ellipsis.
  let previous = 0;
  for (let page = 1; page <= last; page++) {
    if (page !== 1 && page !== last && Math.abs(page - s.page) > 2) continue;
    if (page - previous > 1) items.push(el("li", { class: "gap", "aria-hidden": "true", text: "…" }));
    previous = page;
    items.push(el("li", {}, el("button", {
      type: "button",
      class: "page-number",
      "aria-label": `Page ${page}`,
      "aria-current": page === s.page ? "page" : null,
      onclick: go(page),
      text: String(page),
    })));
  }
  items.push(el("li", {}, el("button", {
    type: "button", class: "page-nav", disabled: s.page >= last, onclick: go(s.page + 1),
  }, "Next", el("span", { "aria-hidden": "true", text: " ›" }))));
  nav.replaceChildren(el("ul", {}, ...items));
  nav.hidden = false;
}

// -- product view -----------------------------------------------------------------

let productAbort = null;

async function showProduct(id) {
  if (productAbort) productAbort.abort();
  const controller = new AbortController();
  productAbort = controller;
  const article = $("product");
  article.setAttribute("aria-busy", "true");
  article.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  $("bought-section").hidden = true;
  $("similar-section").hidden = true;
  const back = $("back-link");
  back.textContent = state.q ? `← Back to results for “${state.q}”` : "← Back to search";
  back.href = stateUrl({ ...state, product: "" });
  const enc = encodeURIComponent(id);
  const recs = (strategy) =>
    api(`/v1/recommend/similar/${enc}?size=${RECS_SIZE}&strategy=${strategy}`, { signal: controller.signal })
      .catch((error) => (error.name === "AbortError" ? Promise.reject(error) : null));
  try {
    const [product, bought, similar] = await Promise.all([
      api(`/v1/products/${enc}`, { signal: controller.signal }),
      recs("co-purchase"),
      recs("text"),
    ]);
    if (controller.signal.aborted) return;
    document.title = `${product.title} · shopsearch`;
    article.replaceChildren(...productDetail(product));
    const boughtIds = new Set();
    if (bought && bought.hits.length) {
      fillRecs("bought", bought.hits);
      bought.hits.forEach((h) => boughtIds.add(h.id));
    }
    if (similar) {
      // Products already shown as bought together are not repeated as similar.
      fillRecs("similar", similar.hits.filter((h) => !boughtIds.has(h.id)));
    }
  } catch (error) {
    if (error.name === "AbortError") return;
    article.replaceChildren(
      el("h1", { class: "product-title", tabindex: "-1", text: "Product not available" }),
      el("p", { class: "error", text: error.message }),
    );
  } finally {
    if (productAbort === controller) article.removeAttribute("aria-busy");
  }
  const title = article.querySelector("h1");
  if (title) title.focus({ preventScroll: true });
}

function productDetail(p) {
  const info = el("div", { class: "product-info" });
  if (p.category) {
    const crumbs = el("ol", { class: "crumbs product-crumbs", "aria-label": "Category" });
    const parts = p.category.split(" > ");
    parts.forEach((part, i) => {
      const path = parts.slice(0, i + 1).join(" > ");
      crumbs.append(el("li", {}, el("a", {
        href: stateUrl({ q: part, page: 1, brands: [], category: path, price: "", inStock: false, raw: false, explain: state.explain, product: "" }),
        onclick: (event) => {
          event.preventDefault();
          navigate({ q: part, page: 1, brands: [], category: path, price: "", inStock: false, raw: false, product: "" });
        },
        text: part,
      })));
    });
    info.append(crumbs);
  }
  if (p.brand) info.append(el("p", { class: "card-brand", text: p.brand }));
  info.append(el("h1", { class: "product-title", tabindex: "-1", text: p.title }));
  info.append(el("div", { class: "card-meta product-meta" },
    el("span", { class: "price price-large", text: formatPrice(p.price) }), stockBadge(p.in_stock)));
  if (p.description) info.append(el("p", { class: "description", text: p.description }));
  const attributes = Object.entries(p.attributes || {});
  if (attributes.length) {
    const dl = el("dl", { class: "attributes" });
    for (const [k, v] of attributes) {
      dl.append(el("div", {}, el("dt", { text: k.replace(/_/g, " ") }), el("dd", { text: v })));
    }
    info.append(el("h2", { class: "subhead", text: "Specifications" }), dl);
  }
  info.append(el("p", { class: "muted sku", text: `SKU ${p.id}` }));
  return [productImage(p, "product-image"), info];
}

function fillRecs(name, hits) {
  const list = $(name);
  list.replaceChildren(
    ...hits.map((hit) =>
      el("li", { class: "rec", "data-id": hit.id, "data-source": hit.source },
        productImage(hit, "rec-image"),
        el("div", { class: "rec-body" },
          hit.brand ? el("p", { class: "card-brand", text: hit.brand }) : null,
          el("h3", { class: "rec-title" }, productLink(hit, hit.title, "card-link")),
          el("div", { class: "card-meta" },
            el("span", { class: "price", text: formatPrice(hit.price) }), stockBadge(hit.in_stock)))),
    ),
  );
  $(`${name}-section`).hidden = hits.length === 0;
}

// -- views ------------------------------------------------------------------------

function render() {
  input.value = state.q;
  $("explain").checked = state.explain;
  suggestions.close();
  const view = state.product ? "product" : state.q ? "search" : "home";
  $("home-view").hidden = view !== "home";
  $("search-view").hidden = view !== "search";
  $("product-view").hidden = view !== "product";
  if (view === "product") {
    showProduct(state.product);
  } else if (view === "search") {
    document.title = `${state.q} · shopsearch`;
    runSearch();
  } else {
    document.title = "shopsearch";
  }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const active = suggestions.active();
  if (active) {
    suggestions.close();
    pickSuggestion(active);
    return;
  }
  const q = input.value.trim();
  if (!q) {
    input.focus();
    return;
  }
  // A new query starts over: no page, no rewrite opt-out, no filters from another query.
  navigate({ q, page: 1, raw: false, brands: [], category: "", price: "", inStock: false, product: "" });
});

$("explain").addEventListener("change", (event) => {
  navigate({ explain: event.target.checked }, { replace: true });
});

$("filters-toggle").addEventListener("click", () => {
  const button = $("filters-toggle");
  const open = button.getAttribute("aria-expanded") !== "true";
  button.setAttribute("aria-expanded", String(open));
  $("facets").classList.toggle("open", open);
});

/** A picked suggestion searches its text (brand and category ones too: their text is
 * the catalog's, normalised to lower case, so it is searched rather than filtered on). */
function pickSuggestion(item) {
  navigate({ q: item.text, page: 1, raw: false, brands: [], category: "", price: "", inStock: false, product: "" });
}

const suggestions = combobox({
  input,
  listbox: $("suggestions"),
  status: $("suggest-status"),
  onPick: pickSuggestion,
});

render();
