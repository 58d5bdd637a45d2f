// The facet column of the search page: category drill-down, brand checkboxes, price
// ranges and stock, as real form controls. Each change goes through navigate() (the
// URL holds the filters).
import { count, el, priceLabelText } from "./dom.js";

const BRANDS_SHOWN = 8;

let go = null; // navigate() of the page, given to renderFacets
let current = null; // the state the column was rendered for

/** A facet value's count: shown as a number, read out as "(16 products)". */
function countText(n) {
  return [
    el("span", { class: "count", "aria-hidden": "true", text: count.format(n) }),
    el("span", { class: "visually-hidden", text: ` (${count.format(n)} ${n === 1 ? "product" : "products"})` }),
  ];
}

function facetGroup(title, id, body) {
  return el(
    "section",
    { class: "facet", "aria-labelledby": id },
    el("h2", { class: "facet-title", id, text: title }),
    body,
  );
}

/**
 * The facet column for the answer's ``facets`` under state ``s``; ``navigate`` applies a
 * change of filters (it re-renders the page, this column included).
 */
export function renderFacets(container, s, facets, navigate) {
  go = navigate;
  current = s;
  const groups = [];
  groups.push(categoryFacet(s, facets.category || []));
  groups.push(brandFacet(s, facets.brand || []));
  groups.push(priceFacet(s, facets.price || []));
  groups.push(stockFacet(s, facets.in_stock || []));
  container.replaceChildren(...groups.filter(Boolean));
}

/** Category paths ("Tools > Power Tools > Drills") as a drill-down: the selected path
 * as breadcrumb buttons, then the next level below it with counts summed over leaves. */
function categoryFacet(s, buckets) {
  const prefix = s.category;
  const depth = prefix ? prefix.split(" > ").length : 0;
  const children = new Map();
  for (const { value, count: n } of buckets) {
    if (prefix && value !== prefix && !value.startsWith(`${prefix} > `)) continue;
    const parts = value.split(" > ");
    if (parts.length <= depth) continue;
    const path = parts.slice(0, depth + 1).join(" > ");
    children.set(path, (children.get(path) || 0) + n);
  }
  if (!prefix && children.size === 0) return null;
  const body = el("div", {});
  if (prefix) {
    const crumbs = el("ol", { class: "crumbs", "aria-label": "Selected category" });
    crumbs.append(
      el("li", {}, el("button", {
        type: "button",
        class: "crumb",
        onclick: () => go({ category: "", page: 1 }),
        text: "All categories",
      })),
    );
    const parts = prefix.split(" > ");
    parts.forEach((part, i) => {
      const path = parts.slice(0, i + 1).join(" > ");
      const last = i === parts.length - 1;
      crumbs.append(
        el("li", {}, last
          ? el("span", { class: "crumb current", "aria-current": "true", text: part })
          : el("button", { type: "button", class: "crumb", onclick: () => go({ category: path, page: 1 }), text: part })),
      );
    });
    body.append(crumbs);
  }
  if (children.size) {
    const list = el("ul", { class: "facet-list" });
    const sorted = [...children.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    for (const [path, n] of sorted) {
      list.append(
        el("li", {}, el("button", {
          type: "button",
          class: "facet-link",
          "data-category": path,
          onclick: () => go({ category: path, page: 1 }),
        }, el("span", { class: "facet-label", text: path.split(" > ").pop() }), countText(n))),
      );
    }
    body.append(list);
  }
  return facetGroup("Category", "facet-category", body);
}

let brandsExpanded = false;
let lastBrandBuckets = [];

function brandFacet(s, buckets) {
  const seen = new Set(buckets.map((b) => b.value));
  // A selected brand stays listed (and can be unticked) even when the counts miss it.
  const rows = [...buckets, ...s.brands.filter((b) => !seen.has(b)).map((value) => ({ value, count: 0 }))];
  if (!rows.length) return null;
  const fieldset = el("fieldset", { class: "facet-options", id: "brand-options" }, el("legend", { class: "visually-hidden", text: "Brand" }));
  // A long list shows its first values; a selected brand is always shown.
  const shown = brandsExpanded ? rows : rows.filter((row, i) => i < BRANDS_SHOWN || s.brands.includes(row.value));
  shown.forEach(({ value, count: n }, i) => {
    const id = `brand-${i}`;
    const box = el("input", {
      type: "checkbox",
      id,
      name: "brand",
      value,
      checked: s.brands.includes(value),
      onchange: (event) => {
        const brands = event.target.checked
          ? [...current.brands, value]
          : current.brands.filter((b) => b !== value);
        go({ brands, page: 1 });
      },
    });
    fieldset.append(
      el("div", { class: "option" }, box, el("label", { for: id },
        el("span", { class: "facet-label", text: value }), countText(n))),
    );
  });
  const more = rows.length > BRANDS_SHOWN
    ? el("button", {
      type: "button",
      class: "link-button more",
      "aria-expanded": String(brandsExpanded),
      "aria-controls": "brand-options",
      onclick: () => {
        brandsExpanded = !brandsExpanded;
        const group = brandFacet(current, lastBrandBuckets);
        document.getElementById("facet-brand").parentElement.replaceWith(group);
        group.querySelector(".more").focus();
      },
      text: brandsExpanded ? "Show fewer" : `Show all ${rows.length} brands`,
    })
    : null;
  lastBrandBuckets = buckets;
  return facetGroup("Brand", "facet-brand", el("div", {}, fieldset, more));
}

function priceFacet(s, buckets) {
  if (!buckets.some((b) => b.count > 0) && !s.price) return null;
  const fieldset = el("fieldset", { class: "facet-options" }, el("legend", { class: "visually-hidden", text: "Price" }));
  const option = (value, label, n, i) => {
    const id = `price-${i}`;
    return el("div", { class: "option" },
      el("input", {
        type: "radio",
        id,
        name: "price",
        value,
        checked: s.price === value,
        disabled: n === 0 && s.price !== value,
        onchange: () => go({ price: value, page: 1 }),
      }),
      el("label", { for: id }, el("span", { class: "facet-label", text: label }),
        n === null ? "" : countText(n)));
  };
  fieldset.append(option("", "Any price", null, "any"));
  buckets.forEach((b, i) => fieldset.append(option(b.value, priceLabelText(b.value), b.count, i)));
  return facetGroup("Price", "facet-price", fieldset);
}

function stockFacet(s, buckets) {
  const inStock = buckets.find((b) => b.value === "true");
  if (!inStock && !s.inStock) return null;
  const box = el("input", {
    type: "checkbox",
    id: "in-stock",
    checked: s.inStock,
    onchange: (event) => go({ inStock: event.target.checked, page: 1 }),
  });
  return facetGroup("Availability", "facet-stock", el("div", { class: "option" }, box,
    el("label", { for: "in-stock" }, el("span", { class: "facet-label", text: "In stock only" }),
      countText(inStock ? inStock.count : 0))));
}
