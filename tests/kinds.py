"""What each test checks, for the README's count (``make test-kinds``): ``exact`` tests compare
numbers with an exact answer (a closed form, the exact Gaussian mixture, an independent
computation, a reference implementation's outputs, or a statistical test against exact draws);
every other test is an ``interface`` test (shapes, dtypes, reproducibility, errors, files, faults,
the command line). conftest.py marks each collected test with one of the two.

EXACT maps a test module to the names of its exact tests, or to ALL when every test in it is one.
A new module of numerical tests belongs here; a module not listed counts as interface.
"""
ALL = "*"

EXACT = {
    "test_analytic": {
        "test_log_prob_matches_multivariate_normal", "test_log_prob_3d_full_and_diag",
        "test_normalization_1d_quadrature", "test_normalization_2d_quadrature", "test_log_prob_t_and_marginal",
        "test_log_prob_t_at_zero_is_log_prob_vp", "test_point_masses_at_positive_t",
        "test_convolution_by_quadrature_1d", "test_score_is_gradient_of_log_prob_t", "test_score_image_shaped_data",
        "test_score_float32", "test_sample_moments", "test_classify",
    },
    "test_analytic_conditionals": {
        "test_class_log_prob_is_bayes_rule_on_the_noisy_components",
        "test_class_score_is_the_gradient_of_the_component_density", "test_component_is_that_gaussian_alone",
        "test_condition_is_bayes_rule_pointwise", "test_noiseless_inpainting_posterior_is_the_partitioned_gaussian",
        "test_condition_moves_the_mode_weights_towards_the_observed_component",
        "test_noiseless_posterior_draws_satisfy_the_observation_at_any_scale",
    },
    "test_guidance": {
        "test_guided_score_is_its_formula", "test_scale_1_samples_the_exact_class",
        "test_scale_0_samples_the_whole_mixture", "test_classifier_gradient_leaves_no_graph_and_works_under_no_grad",
    },
    "test_inverse": {
        "test_project_called_once_per_step_at_t_next", "test_inpaint_with_exact_posterior_score_is_exact",
        "test_probability_flow_with_exact_posterior_score_is_exact", "test_colorize_with_exact_posterior_score_is_exact",
        "test_color_decoupling_is_orthogonal_with_gray_first",
        "test_replacement_draws_the_forward_marginal_at_each_score_time",
        "test_pigdm_guidance_is_exact_for_isotropic_gaussian_data", "test_pigdm_is_closer_to_the_posterior_than_replacement",
    },
    "test_api": {
        "test_timesteps_use_exact_chain_times", "test_timesteps_full_small_chain",
        "test_explicit_schedule_is_used_exactly", "test_builtin_grid_endpoints_and_order",
        "test_logsnr_grid_has_equal_logsnr_steps", "test_karras_grid_has_equal_rho_steps",
    },
    "test_behaviour": ALL,
    "test_conditional": {
        "test_score_model_passes_y_and_cond_score_fn_is_the_conditional_score",
        "test_dsm_loss_with_labels_equals_its_formula_on_the_documented_draws",
        "test_noisy_classifier_loss_is_the_cross_entropy_at_x_t", "test_label_dropout_rate_is_p_within_binomial_error",
        "test_trainer_drops_labels_at_rate_p_from_the_stream_labels",
        "test_noisy_classifier_learns_the_exact_class_posterior_of_a_gaussian_mixture",
    },
    "test_convergence": ALL,
    "test_data": {
        "test_checkerboard_samples_lie_on_black_squares", "test_checkerboard_squares_get_equal_mass_and_are_uniform",
        "test_checkerboard_log_prob_values", "test_checkerboard_density_integrates_to_one_and_nll_is_log_8",
        "test_rings_lie_near_their_radii", "test_mixture_toys_match_their_mixture",
        "test_scale_unscale_round_trip_is_exact", "test_dequantize_fills_each_bin_uniformly",
        "test_mnist_reads_back_exactly", "test_cifar10_reads_back_exactly", "test_cifar10_record_layout",
        "test_each_epoch_is_a_permutation", "test_curve_toys_have_their_exact_mean_and_covariance",
    },
    "test_classifier": {
        "test_shipped_classifier_reaches_97_percent_on_the_test_split",
        "test_feature_statistics_are_the_features_mean_and_covariance",
    },
    "test_cli_ux": {
        "test_sample_prints_the_nfe_a_counting_score_counts_and_the_wall_time", "test_option_reaches_the_sampler",
        "test_image_samples_are_clipped_to_the_data_range_and_counted",
        "test_toy_likelihood_mean_se_and_the_exact_checkerboard_value",
        "test_toy_likelihood_exact_value_only_where_the_density_is_known",
        "test_image_likelihood_bits_per_dim_and_nats_on_the_8_bit_scale",
    },
    "test_compare_images": {"test_fd_rows_and_floor_equal_direct_computation", "test_fd_se_is_the_delete_a_group_jackknife"},
    "test_compare_honest": {
        "test_energy_distance_se_is_the_two_sample_delete_one_jackknife",
        "test_sliced_wasserstein_se_is_the_delete_a_group_jackknife", "test_se_matches_the_spread_over_independent_draws",
        "test_fraction_and_mode_weight_errors", "test_noise_floor_is_the_metric_between_two_draws_of_the_data",
        "test_verdict_names_the_planted_winner", "test_verdict_between_two_exact_samplers_is_indistinguishable",
    },
    "test_diffusers_import": {
        "test_score_is_the_output_converted_by_hand", "test_ddim_equals_diffusers", "test_ddim_final_step_conventions",
        "test_ancestral_equals_diffusers_ddpm", "test_ancestral_full_chain_is_ddpm", "test_score_sde_ve",
    },
    "test_evaluate": {
        "test_fd_of_a_sample_set_against_itself_is_zero",
        "test_fd_in_a_linear_feature_space_is_the_closed_form_of_the_transformed_gaussians",
        "test_kid_is_unbiased_for_two_draws_of_one_distribution_and_positive_for_shifted_ones",
        "test_inception_score_of_known_class_probabilities", "test_kid_is_precision_recall_and_fid_are_torch_fidelitys",
        "test_kid_is_precision_recall_through_the_pipeline_equal_the_functions_on_the_features",
        "test_score_sde_pool_3_and_mu_sigma_statistics_files",
    },
    "test_generate": {"test_each_sample_draws_only_from_its_own_seed"},
    "test_discrete": ALL,
    "test_dpm_references": ALL,
    "test_fast_samplers": {
        "test_weights_integrate_polynomials_exactly", "test_order_one_is_ddim", "test_order_one_on_chain_timesteps_is_ddim",
        "test_point_mass_is_exact_for_every_variant", "test_heun_steps_along_explicit_schedule",
        "test_heun_point_mass_is_exact", "test_brownian_memory_keeps_the_path_unbiased",
    },
    "test_likelihood": ALL,
    "test_losses": {
        "test_dsm_exact_score_is_minimal_with_the_predicted_excess",
        "test_dsm_sigma_weighted_value_is_the_conditional_noise_variance",
        "test_ddpm_loss_exact_discrete_score_is_minimal", "test_ddpm_loss_uses_the_score_models_own_noise_prediction",
        "test_smld_loss_exact_score_is_minimal", "test_importance_table_normaliser",
        "test_importance_sampling_is_exact_for_ve", "test_importance_sampling_unbiased_and_lower_variance",
        "test_importance_sampled_times_follow_the_weight", "test_sum_is_dimension_times_mean",
    },
    "test_metrics": {
        "test_energy_distance_is_the_unbiased_formula", "test_mmd_is_the_unbiased_formula",
        "test_median_bandwidth_is_the_pooled_median_distance", "test_blocked_sums_do_not_depend_on_the_block_size",
        "test_sliced_wasserstein_1d_unequal_sizes_by_hand", "test_sliced_wasserstein_unequal_sizes_match_equal_size_copies",
        "test_energy_distance_closed_form_1d_gaussians", "test_mmd_closed_form_2d_gaussians",
        "test_sliced_wasserstein_of_a_shift", "test_sliced_wasserstein_closed_form_independent_gaussians",
        "test_unbiased_near_zero_under_the_null", "test_the_null_check_detects_a_biased_estimator",
        "test_shift_is_clearly_detected", "test_frechet_distance_matches_scipy", "test_frechet_distance_closed_forms",
    },
    "test_mutants_analytic": ALL,
    "test_mutants_sampling_grids": {"test_quadratic_schedule_is_its_formula", "test_chain_times_use_T_over_N_minus_1"},
    "test_mutants_likelihood": {
        "test_bits_per_dim_equals_log_likelihood_of_its_dequantized_pixels", "test_batch_of_one_with_the_exact_trace",
        "test_fixed_step_methods_reach_the_solver", "test_adaptive_solver_stays_inside_eps_T",
        "test_exact_divergence_is_the_trace_for_a_batch_of_one", "test_hutchinson_averages_its_probes",
    },
    "test_mutants_losses": ALL,
    "test_mutants_sampling_loop": {
        "test_euler_maruyama_table_is_the_closed_form_vp", "test_euler_maruyama_table_is_the_closed_form_ve",
        "test_reverse_diffusion_table_is_the_closed_form", "test_linear_step_uses_a_unit_score_coefficient",
        "test_tweedie_at_uses_float64_coefficients", "test_reverse_drift_is_f_minus_g2_score",
        "test_clamped_time_clamps_to_the_domain_in_the_datas_dtype",
    },
    "test_mutants_sampling_dpm": {"test_multistep_predictor_without_corrector_is_dpm_solver"},
    "test_mutants_sampling_heun": {
        "test_churned_heun_is_edm_algorithm_2", "test_the_churn_window_includes_its_ends",
        "test_heun_predictor_defaults_to_no_churn", "test_heun_predictor_with_churn_is_heun_with_churn",
    },
    "test_mutants_sampling_stochastic": {"test_dpm_solver_predictor_is_dpm_solver", "test_ancestral_default_is_the_full_chain",
                                         "test_corrector_steps_are_their_formula"},
    "test_mutants_sde": ALL,
    "test_mutants_train": ALL,
    "test_mutants_sampling_ode": {
        "test_reverse_sde_is_euler_maruyama_on_torchsdes_path", "test_reverse_sde_per_sample_paths_are_each_rows_own",
        "test_fixed_step_probability_flow_is_its_runge_kutta_scheme",
        "test_adaptive_probability_flow_reaches_the_closed_form_map", "test_srk_per_sample_paths_are_each_rows_own",
        "test_adaptive_method_is_the_one_named", "test_stacked_brownian_describes_the_stacked_batch",
    },
    "test_mutants_sampling_adaptive": {
        "test_adaptive_sde_is_the_algorithm_written_out", "test_take_without_a_piece_is_a_fresh_increment",
        "test_take_a_whole_piece_and_split_one_by_the_bridge", "test_push_only_where_masked_and_reserve_keeps_the_pieces",
        "test_take_a_piece_that_exactly_fits_pops_it", "test_a_batch_of_one",
    },
    "test_fast_paths": {
        "test_grad_accum_equals_one_big_batch", "test_grad_accum_with_clipping_equals_one_big_batch",
        "test_grad_accum_with_labels_splits_images_and_labels_alike",
        "test_checkpointing_gives_the_same_gradients_and_saves_less", "test_fused_adam_steps_as_foreach_adam",
        "test_channels_last_same_loss_and_gradients",
    },
    "test_compiled": {"test_sampler_compiles_once_and_matches_eager", "test_inductor_ddim_matches_eager"},
    "test_class_folders": {"test_labels_and_class_order_are_exact", "test_train_and_test_split_subfolders"},
    "test_memory_estimate": {
        "test_mlp_step_counts_equal_the_count_by_hand", "test_fake_estimate_equals_the_same_step_on_real_tensors",
        "test_persistent_tensors_of_the_trainer_step", "test_activations_are_affine_in_the_batch",
        "test_grad_accum_leaves_the_activations_of_a_micro_batch",
    },
    "test_mutants_sampling_rk": ALL,
    "test_train_compiled": {
        "test_compiled_training_compiles_once_and_matches_eager", "test_compiled_bf16_channels_last_training_compiles_once",
        "test_inductor_training_matches_eager", "test_amp_gradients_within_bf16_precision",
    },
    "test_no_grad": {"test_score_functions_may_take_input_gradients"},
    "test_nets": {
        "test_sinusoidal_embedding_is_the_ddpm_formula", "test_score_model_applies_the_formula",
        "test_attention_is_single_head_softmax_attention",
        "test_score_model_reproduces_the_exact_score", "test_score_model_conditioning_values",
    },
    "test_pretrained_import": {"test_cli_import_reproduces_the_reference_score"},
    "test_reference_nets": {
        "test_score_matches_the_references_with_ema_weights", "test_sde_std_is_the_references_marginal_std",
        "test_upfirdn2d_is_its_definition", "test_fir_up_and_downsampling_are_their_definitions",
    },
    "test_split_likelihood": {
        "test_batches_give_the_one_batch_bits_per_dim_of_the_same_draws",
        "test_repeats_average_k_independent_draws_and_the_se_is_over_images",
        "test_toy_points_batched_with_per_point_probes",
    },
    "test_precision": {"test_bf16_network_samples_agree_with_fp32"},
    "test_sampler_distributions": ALL,
    "test_samplers": {
        "test_sampler_matches_exact_distribution", "test_reversible_heun_matches_exact_distribution",
        "test_adaptive_sde_redraw_is_biased", "test_two_sample_check_has_power", "test_denoise_is_one_tweedie_step",
        "test_denoised_samples_match_data_distribution",
    },
    "test_sde": {
        "test_closed_forms_tensor_t", "test_closed_forms_float_t", "test_float32_accuracy_and_dtype",
        "test_moment_odes_autograd", "test_moment_odes_finite_differences", "test_vp_default_ddpm_schedule",
        "test_beta_tables_custom", "test_discretize_at_grid_points", "test_discretize_float32",
        "test_ve_discrete_sigmas", "test_vp_chain_marginals", "test_ve_chain_marginals",
        "test_subvp_discretize_is_euler_off_grid", "test_prior_sampling", "test_prior_logp", "test_reverse",
        "test_vp_discretize_float32_has_no_cancellation",
    },
}


def kind(module: str, function: str) -> str:
    """'exact' or 'interface' for test ``function`` (without parameters) of test ``module``."""
    names = EXACT.get(module, ())
    return "exact" if names == ALL or function in names else "interface"
