/* The built-in layer types: one X(ident) line each, defined in src/backends/
 * as `const ts_layer_type ts__<ident>_layer_type`. Keep alphabetical. Layers
 * over optional libraries sit inside their TS_HAVE_* guard. */
X(crypt)
X(error)
X(fault)
X(file)
X(kernel)
X(linear)
X(log_writes)
X(memory)
#ifdef TS_HAVE_NBD
X(nbd)
#endif
#ifdef TS_HAVE_RBD
X(rbd)
#endif
X(snapshot)
X(snapshot_origin)
X(thin)
X(thin_pool)
X(zero)
