// peft-hub catalog: small progressive enhancements. Every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Copy buttons next to code snippets.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const text = source ? source.innerText.replace(/\n$/, "") : "";
      let done = false;
      try {
        await navigator.clipboard.writeText(text);
        done = true;
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        done = document.execCommand && document.execCommand("copy");
      }
      button.textContent = done ? "Copied" : "Press Ctrl+C";
      setTimeout(() => { button.textContent = "Copy"; }, 1800);
    });
  }

  // Search forms: leave empty fields out of the URL, so shared links stay short.
  for (const form of document.querySelectorAll("form[data-drop-empty]")) {
    form.addEventListener("submit", () => {
      for (const field of form.elements) {
        if (field.name && field.value === "") field.disabled = true;
      }
      setTimeout(() => { for (const field of form.elements) field.disabled = false; }, 0);
    });
  }

  // Filters with thousands of values (owner, base model): the text field suggests
  // values from /api/facets/... as one types. Without this it is a plain filter field.
  for (const input of document.querySelectorAll("input[data-typeahead]")) {
    const list = input.list;
    if (!list) continue;
    let timer = null;
    let asked = 0;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const mine = ++asked;
        const url = `${input.dataset.typeahead}?limit=10&prefix=${encodeURIComponent(input.value.trim())}`;
        let values;
        try {
          const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
          if (!response.ok) return;
          values = (await response.json()).values;
        } catch (_) {
          return; // offline or refused: the field still works as typed
        }
        if (mine !== asked || !Array.isArray(values)) return; // a newer keystroke has asked since
        const options = values.map(({ value, count }) => {
          const option = document.createElement("option");
          option.value = value;
          option.textContent = `${value} (${count})`;
          return option;
        });
        list.replaceChildren(...options);
      }, 150);
    });
  }

  // Phones: the filters start folded, so the results come first.
  if (window.matchMedia("(max-width: 640px)").matches) {
    for (const details of document.querySelectorAll("details[data-collapse-on-phone]")) details.open = false;
  }

  // Compose: add rows on demand instead of showing a spare one.
  const rows = document.getElementById("compose-rows");
  const add = document.getElementById("add-row");
  if (rows && add) {
    const all = rows.querySelectorAll(".compose-row");
    const spare = all[all.length - 1];
    if (all.length > 2 && spare.querySelector("input[name=a]").value === "") spare.remove();
    add.hidden = false;
    add.addEventListener("click", () => {
      const template = rows.querySelector(".compose-row");
      const row = template.cloneNode(true);
      const n = rows.querySelectorAll(".compose-row").length + 1;
      for (const input of row.querySelectorAll("input")) {
        const base = input.name;
        input.id = `${base}-${n}`;
        input.value = "";
        const label = row.querySelector(`label[for^="${base}-"]`);
        label.htmlFor = input.id;
        if (base === "a") label.textContent = `Adapter ${n}`;
      }
      rows.appendChild(row);
      row.querySelector("input[name=a]").focus();
    });
  }
});
