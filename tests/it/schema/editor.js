// Drives yaml-language-server (the engine of VS Code's YAML extension and of the YAML
// support in Neovim, Helix, Emacs lsp-mode, ...) as an editor would, on config/postern.yaml
// with its `# yaml-language-server: $schema=` modeline. Run by tests/it/schema/editor.rs:
//   node editor.js CONFIG_PATH BROKEN_TEXT ODD_TEXT
// prints one JSON object: the diagnostics of the shipped text, of BROKEN_TEXT and of
// ODD_TEXT (each opened as a sibling file, so the modeline resolves the same way), the completions offered on a new
// line in the first listener, and the hover text of `max_age`.
'use strict';
// Never hang: a language server that does not answer within a minute fails the test (the
// Rust side also kills this process after its own deadline).
setTimeout(() => {
  process.stderr.write('editor.js: no answer from yaml-language-server within 60 s\n');
  process.exit(2);
}, 60000).unref();
const fs = require('fs');
const path = require('path');
// yaml-language-server is found through NODE_PATH (npm's global root); its own dependencies
// are resolved from it, as npm nests them there.
const serverRequire = require('module').createRequire(require.resolve('yaml-language-server/package.json'));
const { URI } = serverRequire('vscode-uri');
const { TextDocument } = serverRequire('vscode-languageserver-textdocument');
const yls = serverRequire('yaml-language-server/lib/umd/languageservice/yamlLanguageService');

const fetched = [];
const service = yls.getLanguageService({
  schemaRequestService: async (uri) => {
    fetched.push(uri);
    return fs.readFileSync(URI.parse(uri).fsPath, 'utf8');
  },
  workspaceContext: {
    resolveRelativePath: (rel, resource) =>
      URI.file(path.resolve(path.dirname(URI.parse(resource).fsPath), rel)).toString(),
  },
});
service.configure({ validate: true, completion: true, hover: true, yamlVersion: '1.2' });

const lines = (diags) => diags.map((d) => ({ line: d.range.start.line + 1, message: d.message }));

(async () => {
  const [file, broken, oddText] = process.argv.slice(2);
  const text = fs.readFileSync(file, 'utf8');
  const shipped = TextDocument.create(URI.file(file).toString(), 'yaml', 1, text);
  const sibling = path.join(path.dirname(file), 'editor-test-broken.yaml');
  const bad = TextDocument.create(URI.file(sibling).toString(), 'yaml', 1, broken);
  const oddFile = path.join(path.dirname(file), 'editor-test-odd.yaml');
  const odd = TextDocument.create(URI.file(oddFile).toString(), 'yaml', 1, oddText);

  // A new, indented line after the first listener's `auth:` line.
  const marker = '    auth: required\n';
  const at = text.indexOf(marker) + marker.length;
  const edited = text.slice(0, at) + '    \n' + text.slice(at);
  const editing = TextDocument.create(URI.file(file).toString(), 'yaml', 2, edited);
  const completion = await service.doComplete(editing, editing.positionAt(at + 4), false);

  const hover = await service.doHover(shipped, shipped.positionAt(text.indexOf('max_age')));
  const out = {
    shipped: lines(await service.doValidation(shipped, false)),
    broken: lines(await service.doValidation(bad, false)),
    odd: lines(await service.doValidation(odd, false)),
    completion: completion.items.map((i) => i.label).sort(),
    hover: hover ? JSON.stringify(hover.contents) : '',
    fetched,
  };
  // Exit once written, whatever timers or handles the language service keeps open.
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
