/* The built-in layer types: one X(ident) line each, defined in src/backends/
 * as `const ts_layer_type ts__<ident>_layer_type`. Keep alphabetical. */
X(crypt)
X(error)
X(fault)
X(file)
X(kernel)
X(linear)
X(memory)
X(snapshot)
X(snapshot_origin)
X(thin)
X(thin_pool)
X(zero)
