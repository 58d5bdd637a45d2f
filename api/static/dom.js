// DOM and formatting helpers of the search page, and its one way to call the API.
// Everything that puts API text on the page goes through el(), which only ever
// creates text nodes (never innerHTML): product data is the shop's input.

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
export const count = new Intl.NumberFormat("en-US");
const dollars = (v) =>
  Number.isInteger(v)
    ? new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 0 }).format(v)
    : money.format(v);

export function formatPrice(price) {
  return typeof price === "number" ? money.format(price) : "Price on request";
}

/** "0-25" -> {min: 0, max: 25}; "500+" -> {min: 500, max: null} (facets.py labels). */
export function parsePriceLabel(label) {
  const m = /^(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?)|\+)$/.exec(label || "");
  if (!m) return null;
  return { min: Number(m[1]), max: m[2] === undefined ? null : Number(m[2]) };
}

export function priceLabelText(label) {
  const range = parsePriceLabel(label);
  if (!range) return label;
  if (range.max === null) return `${dollars(range.min)} & up`;
  if (range.min === 0) return `Under ${dollars(range.max)}`;
  return `${dollars(range.min)} – ${dollars(range.max)}`;
}

/** Only http(s) and same-site images are loaded; anything else shows the placeholder. */
function safeImageUrl(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/** The product image, or (no URL, or it fails to load) a tile with the brand. */
export function productImage(item, className) {
  const box = el("div", { class: `thumb ${className || ""}` });
  const fallback = () => {
    box.replaceChildren(
      el("span", { class: "thumb-placeholder", "aria-hidden": "true", text: initials(item) }),
    );
    box.classList.add("thumb-empty");
  };
  const src = safeImageUrl(item.image_url);
  if (src) {
    const img = el("img", { alt: "", decoding: "async" });
    img.addEventListener("error", fallback, { once: true });
    img.src = src;
    box.append(img);
  } else {
    fallback();
  }
  return box;
}

function initials(item) {
  const words = (item.brand || item.title || "?").split(/[\s+&-]+/).filter(Boolean);
  return words.slice(0, 2).map((w) => w[0].toUpperCase()).join("");
}

export function stockBadge(inStock) {
  if (inStock === true) return el("span", { class: "badge badge-in", text: "In stock" });
  if (inStock === false) return el("span", { class: "badge badge-out", text: "Out of stock" });
  return null;
}


class ApiError extends Error {}

export async function api(path, options) {
  const response = await fetch(path, {
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    ...options,
  });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail) && body.detail[0]) detail = body.detail[0].msg;
    } catch {
      /* not JSON: keep the status line */
    }
    throw new ApiError(detail);
  }
  return response.json();
}
